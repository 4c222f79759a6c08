"""The fronts' Prometheus metrics, with TorchServe's re-exported beside them: one scrape of one port sees both.

TorchServe's own text comes through its one client (torchserve.TorchServe.metrics).

TorchServe's workers write theirs (fastai_serving.stage_metrics: queue wait, batch sizes, stages) into the
same multiprocess folder, which serve names to them too, so they are summed here with the fronts'.

Every front counts its requests here, through the service (`Service.count`), with labels for
the front (rest, grpc) and the protocol (tfserving, v2). Under scripts/serve every front's
processes write to one prometheus_client multiprocess folder (PROMETHEUS_MULTIPROC_DIR, set by
serve before any front starts; gunicorn's config makes one when run alone), and GET /metrics
sums them; in-process (tests) the default registry holds them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

READ_ATTEMPTS = 3  # a scrape reads the processes' files at most this often when one changed as it read them
FILE_HEADER_BYTES = 8  # prometheus_client's file begins with how much of it is used: a shorter file is not whole yet

REQUESTS = Counter(
    "fastai_serving_requests",
    "Requests the fronts answered; status is the HTTP status (REST) or the gRPC code's name",
    ["front", "protocol", "model", "route", "verb", "status"],
)
LATENCY = Histogram(
    "fastai_serving_request_duration_seconds",
    "Time from a request's arrival at a front to its answer",
    ["front", "protocol", "model", "route", "verb"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge(
    "fastai_serving_requests_in_flight", "Requests the fronts are answering now", multiprocess_mode="livesum"
)  # fmt: skip
UPSTREAM_IN_FLIGHT = Gauge(
    "fastai_serving_upstream_requests_in_flight",
    "Predictions sent to TorchServe and not answered yet: queued there, or in a batch a worker runs "
    "(fastai_serving_worker_requests_running)",
    ["model"],
    multiprocess_mode="livesum",
)
INSTANCES = Histogram(
    "fastai_serving_instances_per_request",
    "Instances (images, rows) in one prediction request",
    ["model", "verb"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
UPSTREAM_ERRORS = Counter(
    "fastai_serving_upstream_errors",
    "Prediction calls to TorchServe that failed: unreachable, timeout, worker_died, unavailable (5xx)",
    ["model", "kind"],
)
OVERLOAD_REFUSED = Counter(
    "fastai_serving_refused",
    "Predictions refused before the queue (429, RESOURCE_EXHAUSTED): their deadline could not be met (deadline), "
    "or the model's queue was at its target (queue)",
    ["model", "reason"],
)
UPSTREAM_RETRIES = Counter(
    "fastai_serving_upstream_retries", "Predictions sent again once a restarted worker was ready", ["model"]
)  # fmt: skip
REFUSED_CALLS = Counter(
    "fastai_serving_refused_calls",
    "Calls the fronts refused before reading them: missing_key, wrong_key (mistyped or revoked), not_loopback",
    ["front", "reason"],
)
CALLS_BY_KEY = Counter(
    "fastai_serving_calls_by_key", "Calls the fronts let in, by the name of their API key (the key file's)", ["front", "key"]
)  # fmt: skip


def exposition(torchserve_text: bytes | None) -> tuple[bytes, str]:
    """The Prometheus text of the fronts' metrics, then TorchServe's own (queue time, inference latency, ...);
    `torchserve_text` None: they could not be read for this scrape (said by a gauge)."""
    shim_text = generate_latest(_shim_registry())
    up = CollectorRegistry()
    torchserve_up = Gauge(
        "fastai_serving_torchserve_metrics_up", "Whether TorchServe's metrics could be read for this scrape", registry=up
    )  # fmt: skip
    torchserve_up.set(0 if torchserve_text is None else 1)
    return shim_text + generate_latest(up) + (torchserve_text or b""), CONTENT_TYPE_LATEST


def _shim_registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    forget_dead_processes(folder)
    registry = CollectorRegistry()
    WholeFiles(registry, str(folder))
    return registry


class WholeFiles(multiprocess.MultiProcessCollector):
    """prometheus_client's sum of every process's files, read while the processes go on: a process creates its file
    empty and then sizes it (its first metric of a kind: a model's first request), and a dead process's live gauges
    are removed (here or by gunicorn), so a scrape at that moment found a file empty (struct.error) or gone and
    answered 500. A file that is not whole yet is left to the next scrape, as is one removed meanwhile."""

    def collect(self):
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return self.merge(self._whole_files(), accumulate=True)
            except (OSError, struct.error):  # one changed between the look and the read: look again
                continue
        return self.merge(self._whole_files(), accumulate=True)

    def _whole_files(self) -> list[str]:
        whole = []
        for path in Path(self._path).glob("*.db"):
            try:
                if path.stat().st_size >= FILE_HEADER_BYTES:
                    whole.append(str(path))
            except FileNotFoundError:
                continue
        return whole


def forget_dead_processes(folder: Path) -> None:
    """The live gauges (requests in flight, running) of processes that have ended leave the sums: a TorchServe
    worker that died mid-batch, whose end no one else sees (gunicorn tells of its own workers' ends)."""
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            try:
                multiprocess.mark_process_dead(int(pid), str(folder))
            except FileNotFoundError:
                continue  # another front process's scrape removed it first
