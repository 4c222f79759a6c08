"""gunicorn settings for the shim, from the same FASTAI_SERVING_* variables as the app."""

import os
import tempfile
from pathlib import Path

from fastai_serving_shim.settings import Settings

_settings = Settings.from_env()
# prometheus_client's multiprocess mode: each worker writes its metrics here; /metrics sums them.
# Set before the workers start (and import prometheus_client), in the temp folder (writable on a read-only root).
METRICS_DIR = Path(
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="fastai-serving-metrics-"))
)

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# Threads: a predict waiting on TorchServe never blocks a health check (/ready, /analyze, /).
worker_class = "gthread"
threads = _settings.threads
# A worker may wait the whole predict timeout on TorchServe before answering 504.
timeout = int(_settings.predict_timeout_s) + 30
# On SIGTERM: stop accepting, then answer the requests already accepted for up to this long.
graceful_timeout = _settings.graceful_timeout_s
keepalive = 30
accesslog = None
errorlog = "-"
loglevel = "warning"


def on_starting(server) -> None:
    """A fresh start counts from zero: no metrics files of an earlier run."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def child_exit(server, worker) -> None:
    """A worker's live gauges (requests in flight) leave with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
