"""The handler's metrics in Prometheus: per model, how long requests waited for their batch, how full the batches
were, each instance's share of its batch's time in each stage, and the requests the workers run now.

Why they reach the shim's `/metrics` this way: a TorchServe worker is a Python process of its own, started by
TorchServe's Java frontend, which hands its environment down. scripts/serve makes one prometheus_client
multiprocess folder and names it (PROMETHEUS_MULTIPROC_DIR) to the fronts and to TorchServe alike, so every
worker writes its metrics, one file per process, into the folder whose files the shim's `GET /metrics` already
sums (fastai_serving_shim.metrics): one scrape target on 8501, no port per worker, nothing to push, and nothing
of TorchServe's own metrics machinery (which would need each metric declared in its config and passed through
its log parser). Outside serve (the in-process tests, a plain TorchServe) they stay in the process's registry.

Labels: the model is the one TorchServe registered this worker for; the stage one of four fixed names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from prometheus_client import Gauge, Histogram

from .engine.stages import StageSeconds

SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)

QUEUE_WAIT = Histogram(
    "fastai_serving_queue_wait_seconds",
    "Time from a front's sending a request to TorchServe to the start of the batch that ran it (one per request)",
    ["model"],
    buckets=QUEUE_BUCKETS,
)
BATCH_INSTANCES = Histogram(
    "fastai_serving_batch_instances", "Instances predicted in one TorchServe batch", ["model"], buckets=SIZE_BUCKETS
)  # fmt: skip
BATCH_REQUESTS = Histogram(
    "fastai_serving_batch_requests", "Client requests in one TorchServe batch", ["model"], buckets=SIZE_BUCKETS
)  # fmt: skip
STAGE = Histogram(
    "fastai_serving_stage_duration_seconds",
    "Each predicted instance's share of its batch's time in a stage: decode, transforms, forward, encode "
    "(one observation per instance; the sum is the stage's whole time)",
    ["model", "stage"],
    buckets=SECONDS_BUCKETS,
)
RUNNING = Gauge(
    "fastai_serving_worker_requests_running",
    "Requests in the batches the workers are running now",
    ["model"],
    multiprocess_mode="livesum",
)


@contextlib.contextmanager
def running(model: str, requests: int) -> Iterator[None]:
    """A batch of `requests` running: counted in the workers' running requests until it is answered or fails."""
    gauge = RUNNING.labels(model)
    gauge.inc(requests)
    try:
        yield
    finally:
        gauge.dec(requests)


def batch_answered(model: str, queue_seconds: Sequence[float | None], instances: int, stages: StageSeconds) -> None:
    """A batch answered: each request's wait for it (None: no front said when it sent it), its size in requests
    and predicted instances, and each predicted instance's share of each stage."""
    waited = QUEUE_WAIT.labels(model)
    for seconds in queue_seconds:
        if seconds is not None:
            waited.observe(seconds)
    BATCH_REQUESTS.labels(model).observe(len(queue_seconds))
    BATCH_INSTANCES.labels(model).observe(instances)
    if instances:
        for stage, seconds in stages.items():
            observe_each(STAGE.labels(model, stage), seconds / instances, instances)


def observe_each(histogram: Histogram, value: float, count: int) -> None:
    """`count` observations of `value`, in one write per series rather than `count` (a batch of a thousand rows
    would otherwise pay thousands of writes); prometheus_client's `observe`, with a count."""
    buckets, bounds, total = (getattr(histogram, name, None) for name in ("_buckets", "_upper_bounds", "_sum"))
    if buckets is None or bounds is None or total is None:  # another prometheus_client: one at a time
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    index = next((i for i, bound in enumerate(bounds) if value <= bound), None)  # None: NaN, as observe skips it
    if index is not None:
        buckets[index].inc(count)
