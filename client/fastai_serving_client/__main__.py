"""`python -m fastai_serving_client` is `predict-batch`."""

from fastai_serving_client.cli import main

main()
