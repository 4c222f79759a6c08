"""gunicorn settings for the REST front, from the same FASTAI_SERVING_* variables as the app."""

import os
import signal
import tempfile
from pathlib import Path

from fastai_serving import defaults
from fastai_serving_shim.listener import LISTEN_FD
from fastai_serving_shim.settings import Settings

_settings = Settings.from_env()
# prometheus_client's multiprocess mode: each worker writes its metrics here; /metrics sums them. scripts/serve
# makes one folder for every front (REST and gRPC); run alone, gunicorn makes its own, in the temp folder.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fastai-serving-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

# scripts/serve binds the listening socket itself and hands it down, so that it can stop new handshakes
# before the front stops (no connection is reset at shutdown: fastai_serving_shim.listener).
bind = f"fd://{os.environ[LISTEN_FD]}" if os.environ.get(LISTEN_FD) else f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# Threads: a predict waiting on TorchServe never blocks a health check (/ready, /analyze, /).
worker_class = "gthread"
threads = _settings.threads
# A worker may wait the whole predict timeout on TorchServe before answering 504.
timeout = int(_settings.predict_timeout_s) + defaults.FRONT_STOP_MARGIN_S
# On SIGTERM: stop accepting, then answer the requests already accepted for up to this long.
graceful_timeout = _settings.graceful_timeout_s
keepalive = defaults.SHIM_KEEPALIVE_S
accesslog = None
errorlog = "-"
loglevel = "warning"


def on_starting(server) -> None:
    """A fresh start counts from zero: no metrics files of an earlier run (scripts/serve clears its own folder)."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    if _OWN_METRICS_DIR:
        for stale in METRICS_DIR.glob("*.db"):
            stale.unlink()


def child_exit(server, worker) -> None:
    """A worker's live gauges (requests in flight) leave with it. A scrape may have removed them first
    (fastai_serving_shim.metrics.forget_dead_processes): an error here would end gunicorn's master."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(worker.pid)
    except FileNotFoundError:
        pass


def post_worker_init(worker) -> None:
    """SIGHUP to a worker reads its key file again now (scripts/serve sends it there: the master's would restart it)."""
    from fastai_serving_shim.rest.app import read_again

    signal.signal(signal.SIGHUP, lambda *_: read_again(worker.wsgi))
