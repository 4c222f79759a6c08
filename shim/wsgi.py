"""The WSGI entry point for gunicorn: `gunicorn -c python:shim.gunicorn_conf shim.wsgi:app`."""

from shim.app import create_app
from shim.settings import Settings

app = create_app(Settings.from_env())
