"""Faults under load: a worker killed mid-load hangs nothing and answers nothing wrong; TorchServe restarts it.

TorchServe answers requests in flight on a dying worker with 507 "Worker died"; the shim waits
for the restarted worker and sends them again (inference is idempotent). If the worker dies
while TorchServe is still gathering its next batch, TorchServe never answers the requests it
had gathered (docs/reliability.md): the shim's predict timeout turns those into a clean 504.
"""

from __future__ import annotations

import base64
import os
import signal
import threading

import pytest
import requests

from harness.load import expected_probabilities, run_checked_load
from harness.servers import start_shim
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def worker_pids(servers, model: str) -> list[int]:
    described = requests.get(f"{servers.management}/models/{model}", timeout=5).json()
    return [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]


def wait_until_ready(servers, model: str, timeout_s: float = 120) -> None:
    wait_for(lambda: servers.ready(model), f"{model} has a READY worker after the kill", timeout_s)


def test_a_worker_killed_mid_load_hangs_nothing_and_is_restarted(torchserve, demo_model, loaded_learners, tmp_path):
    images = [(demo_model / "samples" / f"{d}.png").read_bytes() for d in range(10)]
    expected = expected_probabilities(loaded_learners["digits"], images)
    # A shim of its own with a 30 s predict timeout bounds the one case TorchServe never answers.
    shim_process, shim = start_shim(
        tmp_path, upstream=torchserve.inference, management=torchserve.management, predict_timeout_s="30"
    )
    url = f"{shim}/v1/models/digits:predict"
    outcome = {}
    stop = threading.Event()
    load = threading.Thread(
        target=lambda: outcome.setdefault(
            "result", run_checked_load(url, images, expected, clients=4, max_instances=8, timeout_s=90, until=stop)
        )
    )
    (victim,) = worker_pids(torchserve, "digits")
    try:
        before = len(torchserve.batch_lines())
        load.start()
        # Mid-load: the worker has answered batches of this load, and goes on being sent more.
        wait_for(lambda: len(torchserve.batch_lines()) >= before + 2, "the load's first batches")
        os.kill(victim, signal.SIGKILL)
        wait_until_ready(torchserve, "digits")
        restarted = len(torchserve.batch_lines())
        wait_for(lambda: len(torchserve.batch_lines()) >= restarted + 2, "batches on the restarted worker")
        stop.set()
        load.join(timeout=200)
    finally:
        stop.set()
        shim_process.terminate()
        shim_process.wait(timeout=30)
    assert not load.is_alive(), "requests hung after the worker was killed"
    result = outcome["result"]
    assert result.mismatches == []
    assert result.failures == []  # every request was answered, none waited out the client's timeout
    # Retried by the shim, else a clean 503 (worker not back in time) or 504 (a gathered batch lost).
    assert set(result.errors) <= {503, 504}, result.errors
    assert sum(result.errors.values()) <= 8  # only requests in flight around the kill (4 clients, a retry each)
    assert result.images > 0
    assert victim not in worker_pids(torchserve, "digits")
    after = requests.post(
        f"{torchserve.shim}/v1/models/digits:predict",
        json={"image_bytes": base64.b64encode(images[3]).decode()},
        timeout=60,
    )
    assert after.status_code == 200 and after.json()["prediction"] == "3"
