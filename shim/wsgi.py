"""The WSGI entry point for gunicorn: `gunicorn -c python:fastai_serving_shim.gunicorn_conf fastai_serving_shim.wsgi:app`."""

from fastai_serving_shim.app import create_app
from fastai_serving_shim.settings import Settings

app = create_app(Settings.from_env())
