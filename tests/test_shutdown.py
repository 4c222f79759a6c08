"""SIGTERM, as Kubernetes and `docker stop` send it: readiness fails first, every accepted request is answered, then both servers exit.

The clients stand in for a load balancer: they stop sending new requests once `/ready`
answers 503, as a Service does once its probe fails, and they never drop one they sent.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fastai_serving_shim import listener
from harness.load import expected_probabilities, run_checked_load
from harness.servers import Servers, archive_here
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

DRAIN_S = 5  # the load balancer's margin to see readiness fail and stop sending: seconds, on a busy 2-core machine


@pytest.fixture(params=["as-the-suite-runs", "as-the-image-runs-uid-10001-no-capabilities"])
def draining_servers(request, exported_learners):
    """serve as the suite runs (root, in CI) and as the image and the manifests run it: uid 10001 with no
    capabilities, where the kernel refuses things root may do (a socket filter on the listener, for one)."""
    # A folder every user may walk into (pytest's own temp folders are root's alone).
    folder = Path(tempfile.mkdtemp(prefix="fastai-serving-shutdown-"))
    folder.chmod(0o755)  # uid 10001 walks into it to reach its logs and store
    store = folder / "store"
    archive_here("digits", exported_learners["digits"], store)
    # "slow" holds each lone request 20 s (it waits that long to fill a batch): one is still in flight
    # after the drain, when the shim stops accepting.
    archive_here("slow", exported_learners["digits"], store, "--max-batch-delay", "20000")
    servers = Servers(
        model_store=store,
        log_dir=folder / "logs",
        drain_s=DRAIN_S,
        unprivileged=request.param != "as-the-suite-runs",
    )
    try:
        yield servers.start(["digits", "slow"])
    finally:
        servers.stop()
        shutil.rmtree(folder, ignore_errors=True)


def metrics_of(servers: Servers) -> list:
    text = requests.get(f"{servers.shim}/metrics", timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def received_by_torchserve(servers: Servers, model: str) -> float:
    """The requests TorchServe's frontend has received for `model` (counted on arrival, before any batch)."""
    return sum(
        s.value
        for s in metrics_of(servers)
        if s.name == "ts_inference_requests_total" and s.labels.get("model_name") == model
    )


def answered(servers: Servers, model: str) -> float:
    return sum(
        s.value
        for s in metrics_of(servers)
        if s.name == "fastai_serving_requests_total" and s.labels.get("model") == model and s.labels["status"] == "200"
    )


def test_sigterm_under_load_answers_every_accepted_request_then_exits_cleanly(
    draining_servers, demo_model, loaded_learners
):
    servers = draining_servers
    images = [path.read_bytes() for path in sorted((demo_model / "images").rglob("*.png"))[:30]]
    expected = expected_probabilities(loaded_learners["digits"], images)
    routable, readiness = threading.Event(), []
    routable.set()

    def load_balancer() -> None:  # polls readiness as a Service's probe does, and stops routing on a 503
        while routable.is_set():
            try:
                status = requests.get(f"{servers.shim}/ready", timeout=2).status_code
            except requests.Timeout:
                continue  # no answer in the probe's time (a stalled machine) says nothing either way: ask again
            except requests.ConnectionError:
                status = 0
            readiness.append((time.monotonic(), status))
            if status != 200:
                routable.clear()
            time.sleep(0.05)

    outcome: dict = {}
    stopped_routing = threading.Event()
    probe = threading.Thread(target=load_balancer)
    load = threading.Thread(
        target=lambda: outcome.setdefault(
            "result",
            run_checked_load(
                f"{servers.shim}/v1/models/digits:predict", images, expected, clients=6, max_instances=16,
                duration_s=120, until=stopped_routing,
            ),
        )
    )  # fmt: skip
    body = {"instances": [{"b64": base64.b64encode(images[0]).decode()}]}
    slow_answer: dict = {}

    def slow_request() -> None:
        slow_answer["response"] = requests.post(f"{servers.shim}/v1/models/slow:predict", json=body, timeout=60)
        slow_answer["at"] = time.monotonic()

    slow = threading.Thread(target=slow_request)
    probe.start()
    load.start()
    wait_for(lambda: answered(servers, "digits") >= 10, "the load answered")
    # Sent once the load flows, so only this wait stands between it and the signal, however slow the machine.
    slow.start()
    wait_for(lambda: received_by_torchserve(servers, "slow") >= 1, "the slow request held by TorchServe")
    assert "response" not in slow_answer  # still in flight
    servers.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not routable.is_set(), "the load balancer seeing readiness fail")
    stopped_routing.set()  # the load balancer saw readiness fail: it sends no new request
    load.join(timeout=120)
    slow.join(timeout=60)
    exit_code = servers.process.wait(timeout=120)
    probe.join(timeout=10)

    result = outcome["result"]
    assert result.requests > 0 and result.errors == {} and result.failures == [] and result.mismatches == []
    first_not_ready = next(when for when, status in readiness if status != 200)
    assert (
        next(status for when, status in readiness if when >= first_not_ready) == 503
    )  # readiness failed, not the shim
    # In flight through the drain and past it, when the shim stopped accepting: answered, after readiness failed.
    assert slow_answer["response"].status_code == 200 and slow_answer["at"] > first_not_ready
    assert slow_answer["response"].json()["predictions"][0] == pytest.approx(expected[0], abs=1e-4)
    log = (servers.log_dir / "serve.out").read_text()
    assert exit_code == 0, log
    assert "serve: draining" in log and "stopping (SIGTERM)" in log
    # Each front says how its listener closed: with no reset where the kernel allows the socket filter (root may),
    # else plainly (this kernel refuses it to uid 10001 without capabilities: the image's crash on SIGTERM).
    as_root = os.geteuid() == 0 and not servers.unprivileged
    closes = [listener.NO_RESET] if as_root else [listener.NO_RESET, listener.PLAIN_CLOSE_UNPRIVILEGED]
    assert any(f"serve: the REST front stops: {how}" in log for how in closes), log
    assert any(f"grpc: stopping: {how}" in log for how in closes), log
    # None of serve's own code failed on the way down (the image's crash was a PermissionError in the listener).
    ours = [block for block in log.split("Traceback (most recent call last):")[1:] if "fastai_serving" in block]
    assert ours == [], log
