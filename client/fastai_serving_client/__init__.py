"""predict-batch: batch inference through any TF-Serving endpoint, resumable, with progress.

A client package of its own: it imports neither torch nor fastai nor the server's packages,
so it installs light (`pip install ./client`) wherever the images and the results are.
"""
