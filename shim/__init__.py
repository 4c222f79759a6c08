"""The TF-Serving front in front of TorchServe: `fastai_serving_shim.app.create_app` builds the REST shim.

Importing the package imports nothing else, so gunicorn's config can read the settings
before prometheus_client is imported (its multiprocess mode is chosen at import).
"""
