"""The WSGI entry point for gunicorn: `gunicorn -c python:fastai_serving_shim.rest.gunicorn_conf fastai_serving_shim.rest.wsgi:app`."""

from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.settings import Settings

app = create_app(Settings.from_env())
