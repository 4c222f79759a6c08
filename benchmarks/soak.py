"""Soak: minutes of checked, mixed-size concurrent load through the shim; bounded, then a summary.

Every answer is compared with the Learner's in-process prediction for its own images. Prints
requests, errors, mismatched predictions, p99 latency, and worker memory at start and end.
Length: SOAK_S seconds (default 300). Exits non-zero on any mismatch or error. Run: `make soak`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "handler"), str(ROOT / "tests"), str(ROOT / "scripts")]

from load import LoadResult, expected_probabilities, run_checked_load  # noqa: E402
from servers import Servers  # noqa: E402


def worker_rss_mb(servers: Servers, model: str) -> float:
    described = requests.get(f"{servers.management}/models/{model}", timeout=5).json()
    pids = [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def merge(total: LoadResult, more: LoadResult) -> LoadResult:
    total.requests += more.requests
    total.images += more.images
    for status, count in more.errors.items():
        total.errors[status] = total.errors.get(status, 0) + count
    total.mismatches += more.mismatches
    total.failures += more.failures
    total.latencies_ms += more.latencies_ms
    total.seconds += more.seconds
    return total


def main() -> int:
    import subprocess

    from demo_model import train_digits
    from fastai_serving.learner import load_learner

    duration_s = float(os.environ.get("SOAK_S", 300))
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        export_path, _ = train_digits(tmp / "demo")
        store = tmp / "store"
        subprocess.run(
            [str(ROOT / "scripts" / "make-archive"), "--name", "digits", "--learner", str(export_path), "--store", str(store)],
            check=True, capture_output=True,
        )
        images = [path.read_bytes() for path in sorted((tmp / "demo" / "images").rglob("*.png"))[:200]]
        expected = expected_probabilities(load_learner(export_path), images)
        servers = Servers(model_store=store, log_dir=tmp / "logs").start(["digits"])
        try:
            url = f"{servers.shim}/v1/models/digits:predict"
            run_checked_load(url, images, expected, clients=2, requests_per_client=5)  # warm-up
            memory = [worker_rss_mb(servers, "digits")]
            began = time.monotonic()
            result = None
            while time.monotonic() - began < duration_s - 1:
                # In rounds of at most a minute, so worker memory can be sampled along the way.
                span = min(60.0, duration_s - (time.monotonic() - began))
                round_result = run_checked_load(url, images, expected, clients=8, duration_s=span, seed=len(memory))
                result = round_result if result is None else merge(result, round_result)
                memory.append(worker_rss_mb(servers, "digits"))
        finally:
            servers.stop()
    print(f"soak: {duration_s:.0f} s through the shim, 8 clients, 1-32 instances per request")
    print(f"soak: {result.summary()}")
    print(f"soak: worker memory {memory[0]:.0f} MB at start, {memory[-1]:.0f} MB at end "
          f"({memory[-1] - memory[0]:+.0f} MB over {time.monotonic() - began:.0f} s); "
          f"each minute: {', '.join(f'{m:.0f}' for m in memory)} MB")
    for line in (result.mismatches + result.failures)[:10]:
        print(f"soak: {line}")
    return 1 if result.mismatches or result.errors or result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
