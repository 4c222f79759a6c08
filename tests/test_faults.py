"""Faults under load: a worker killed mid-load loses nothing and hangs nothing; TorchServe restarts it.

TorchServe answers requests in flight on a dying worker with 507 "Worker died"; the shim waits
for the restarted worker and sends them again (inference is idempotent).
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time

import requests

from load import expected_probabilities, run_checked_load


def worker_pids(servers, model: str) -> list[int]:
    described = requests.get(f"{servers.management}/models/{model}", timeout=5).json()
    return [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]


def wait_until_ready(servers, model: str, timeout_s: float = 120) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if servers.ready(model):
            return time.monotonic() - began
        time.sleep(0.5)
    raise TimeoutError(f"{model} had no READY worker {timeout_s} s after the kill")


def test_a_worker_killed_mid_load_loses_no_request_and_is_restarted(torchserve, demo_model, loaded_learners):
    images = [(demo_model / "samples" / f"{d}.png").read_bytes() for d in range(10)]
    expected = expected_probabilities(loaded_learners["digits"], images)
    url = f"{torchserve.shim}/v1/models/digits:predict"
    outcome = {}
    load = threading.Thread(
        target=lambda: outcome.setdefault(
            "result", run_checked_load(url, images, expected, clients=4, max_instances=8, duration_s=15, timeout_s=90)
        )
    )
    (victim,) = worker_pids(torchserve, "digits")
    load.start()
    time.sleep(3)
    os.kill(victim, signal.SIGKILL)
    load.join(timeout=200)
    assert not load.is_alive(), "requests hung after the worker was killed"
    result = outcome["result"]
    assert result.mismatches == []
    assert result.failures == []
    # Retried by the shim; 503 only if the worker were not back within FASTAI_SERVING_RETRY_S.
    assert result.errors == {}, result.errors
    assert result.images > 0
    wait_until_ready(torchserve, "digits")
    assert victim not in worker_pids(torchserve, "digits")
    after = requests.post(url, json={"image_bytes": base64.b64encode(images[3]).decode()}, timeout=60)
    assert after.status_code == 200 and after.json()["prediction"] == "3"
