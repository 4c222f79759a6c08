"""The WSGI entry point for gunicorn: `gunicorn -c shim/gunicorn.conf.py shim.wsgi:app`."""

from shim.app import create_app
from shim.settings import Settings

app = create_app(Settings.from_env())
