"""Reliability through the shim: checked load, health while saturated, TorchServe down and back, security defaults."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from harness.load import expected_probabilities, run_checked_load
from harness.servers import Servers, start_shim

pytestmark = pytest.mark.e2e


def digit_images(demo_model, count: int = 60) -> list[bytes]:
    paths = sorted((demo_model / "images").rglob("*.png"), key=lambda p: int(p.stem))[:count]
    return [path.read_bytes() for path in paths]


def test_mixed_size_concurrent_load_answers_every_request_with_its_own_predictions(
    torchserve, demo_model, loaded_learners
):
    images = digit_images(demo_model)
    expected = expected_probabilities(loaded_learners["digits"], images)
    result = run_checked_load(
        f"{torchserve.shim}/v1/models/digits:predict",
        images,
        expected,
        clients=8,
        max_instances=32,
        requests_per_client=6,
    )
    assert result.requests == 48
    assert result.errors == {} and result.failures == []
    assert result.mismatches == []


def test_health_checks_are_answered_while_a_prediction_waits_behind_saturating_load(
    torchserve, demo_model, loaded_learners
):
    """A health check never waits behind inference: several are answered within one queued prediction's life.

    A check that waited behind the model's queue would finish with the prediction queued behind
    twelve clients' batches, not four times within it; no clock is read, so a slow machine cannot fail it.
    """
    images = digit_images(demo_model, 20)
    expected = expected_probabilities(loaded_learners["digits"], images)
    probe = {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}} for image in images] * 2}
    outcome, stop, saturating = {}, threading.Event(), threading.Event()
    url = f"{torchserve.shim}/analyze:predict"
    load = threading.Thread(
        target=lambda: outcome.setdefault(
            "result",
            run_checked_load(url, images, expected, clients=12, max_instances=32, until=stop, saturating=saturating),
        )
    )
    load.start()
    answered_during_each_probe = []
    try:
        # Probe once every client keeps a request in flight (CI: a probe sent as the load began was answered at once).
        assert saturating.wait(timeout=300), "the load never got an answer for each client"
        with ThreadPoolExecutor(max_workers=1) as prober:
            for _ in range(3):
                probing = prober.submit(requests.post, url, json=probe, timeout=300)
                checks = []
                while not probing.done():
                    # A load balancer's check (chip-n-scale: every 30 s, 5 s timeout) must not wait behind inference.
                    for route in ("/analyze", "/ready"):
                        checks.append(requests.get(f"{torchserve.shim}{route}", timeout=60).status_code)
                assert probing.result().status_code == 200
                answered_during_each_probe.append(checks)
    finally:
        stop.set()
        load.join()
    assert all(len(checks) >= 4 and set(checks) == {200} for checks in answered_during_each_probe), (
        answered_during_each_probe
    )
    assert outcome["result"].mismatches == [] and outcome["result"].errors == {}


def test_torchserve_down_then_back_then_stopped_with_its_own_command(tmp_path, digits_only_store, demo_model):
    """The shim answers 503 while TorchServe is away and recovers by itself when it returns.

    The second time TorchServe goes down it is stopped as its documentation says, with
    `torchserve --stop`: that finds the server scripts/serve started, and serve says so and exits non-zero.
    """
    backend = Servers(model_store=digits_only_store, log_dir=tmp_path / "backend", with_shim=False)
    process, shim = start_shim(
        tmp_path / "shim", upstream=backend.inference, management=backend.management, default_model="digits"
    )
    body = {"instances": [{"b64": base64.b64encode((demo_model / "samples" / "8.png").read_bytes()).decode()}]}
    try:
        assert requests.get(f"{shim}/analyze", timeout=5).status_code == 503
        assert requests.post(f"{shim}/analyze:predict", json=body, timeout=10).status_code == 503
        backend.start(["digits"])
        assert requests.get(f"{shim}/analyze", timeout=5).status_code == 200
        answer = requests.post(f"{shim}/analyze:predict", json=body, timeout=60)
        assert answer.status_code == 200 and max(range(10), key=answer.json()["predictions"][0].__getitem__) == 8
        stopping = torchserve_stop(backend.run_dir)
        assert "TorchServe has stopped" in stopping.stdout, stopping.stdout + stopping.stderr
        assert backend.process.wait(timeout=60) != 0
        assert "TorchServe stopped from outside (`torchserve --stop`" in (backend.log_dir / "serve.out").read_text()
        assert requests.get(f"{shim}/analyze", timeout=5).status_code == 503
        assert requests.post(f"{shim}/analyze:predict", json=body, timeout=10).status_code == 503
    finally:
        backend.stop()
        process.terminate()
        process.wait(timeout=30)


def torchserve_stop(run_dir: Path) -> subprocess.CompletedProcess:
    """TorchServe's own `torchserve --stop`, as a user runs it in the shell that would see serve's temp folder."""
    torchserve = Path(sys.executable).parent / "torchserve"
    environment = {**os.environ, "TMPDIR": str(run_dir)}
    return subprocess.run([str(torchserve), "--stop"], capture_output=True, text=True, env=environment, timeout=120)


def test_management_and_metrics_are_not_reachable_through_the_shim(torchserve):
    # /metrics on the shim is its own Prometheus text (TorchServe's re-exported, read-only), not TorchServe's API.
    for path in ("/models", "/models/digits", "/ping", "/predictions/digits", "/api-description"):
        response = requests.get(f"{torchserve.shim}{path}", timeout=5)
        assert response.status_code == 404 and set(response.json()) == {"error"}
    registering = requests.post(f"{torchserve.shim}/models?url=evil.mar", timeout=5)
    assert registering.status_code == 404


def test_torchserve_listens_on_loopback_only(torchserve):
    java = [
        p for p in psutil.Process(torchserve.process.pid).children(recursive=True)
        if p.name() == "java"
    ]  # fmt: skip
    assert java, "no TorchServe frontend found under scripts/serve"
    listening = [c for c in java[0].net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = {c.laddr.port for c in listening}
    assert {
        torchserve.inference_port,
        torchserve.management_port,
        torchserve.metrics_port,
        *torchserve.grpc_ports,
    } <= ports
    assert {c.laddr.ip for c in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_models_cannot_be_registered_from_a_remote_url(torchserve):
    response = requests.post(f"{torchserve.management}/models?url=http://127.0.0.1:9/evil.mar", timeout=10)
    assert response.status_code == 404 and "allowed URL" in response.json()["message"]


def test_metrics_are_prometheus_text_on_loopback(torchserve):
    response = requests.get(f"http://127.0.0.1:{torchserve.metrics_port}/metrics", timeout=5)
    assert response.status_code == 200 and "# TYPE" in response.text


def test_a_port_nobody_listens_on_is_a_clean_503_not_a_hang(tmp_path, nothing_listens):
    nothing = f"http://127.0.0.1:{nothing_listens}"
    process, shim = start_shim(tmp_path, upstream=nothing, management=nothing)
    try:
        response = requests.get(f"{shim}/analyze", timeout=5)
        assert response.status_code == 503 and "unreachable" in response.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)
