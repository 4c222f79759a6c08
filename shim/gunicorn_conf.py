"""gunicorn settings for the shim, from the same FASTAI_SERVING_* variables as the app."""

from shim.settings import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# Threads: a predict waiting on TorchServe never blocks a health check (/ready, /analyze).
worker_class = "gthread"
threads = _settings.threads
# A worker may wait the whole predict timeout on TorchServe before answering 504.
timeout = int(_settings.predict_timeout_s) + 30
graceful_timeout = 10
keepalive = 30
accesslog = None
errorlog = "-"
loglevel = "warning"
