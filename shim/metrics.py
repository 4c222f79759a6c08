"""The fronts' Prometheus metrics, with TorchServe's re-exported beside them: one scrape of one port sees both.

Every front counts its requests here, through the service (`Service.count`), with labels for
the front (rest, grpc) and the protocol (tfserving, v2). Under scripts/serve every front's
processes write to one prometheus_client multiprocess folder (PROMETHEUS_MULTIPROC_DIR, set by
serve before any front starts; gunicorn's config makes one when run alone), and GET /metrics
sums them; in-process (tests) the default registry holds them.
"""

from __future__ import annotations

import os

import requests
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

from fastai_serving import defaults

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
UPSTREAM_RETRIES = Counter(
    "fastai_serving_upstream_retries", "Predictions sent again once a restarted worker was ready", ["model"]
)  # fmt: skip


def exposition(torchserve_metrics_url: str) -> tuple[bytes, str]:
    """The Prometheus text of the shim's metrics, then TorchServe's own (queue time, inference latency, ...)."""
    shim_text = generate_latest(_shim_registry())
    up = CollectorRegistry()
    torchserve_up = Gauge(
        "fastai_serving_torchserve_metrics_up", "Whether TorchServe's metrics could be read for this scrape", registry=up
    )  # fmt: skip
    try:
        response = requests.get(torchserve_metrics_url, timeout=defaults.METRICS_SCRAPE_TIMEOUT_S)
        response.raise_for_status()
        torchserve_text = response.content
        torchserve_up.set(1)
    except requests.RequestException:
        torchserve_text = b""
        torchserve_up.set(0)
    return shim_text + generate_latest(up) + torchserve_text, CONTENT_TYPE_LATEST


def _shim_registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
