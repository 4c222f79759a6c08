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

from load import expected_probabilities, run_checked_load  # noqa: E402
from servers import Servers  # noqa: E402


def worker_rss_mb(servers: Servers, model: str) -> float:
    described = requests.get(f"{servers.management}/models/{model}", timeout=5).json()
    pids = [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


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
            memory_start = worker_rss_mb(servers, "digits")
            began = time.monotonic()
            result = run_checked_load(url, images, expected, clients=8, duration_s=duration_s)
            memory_end = worker_rss_mb(servers, "digits")
        finally:
            servers.stop()
    print(f"soak: {duration_s:.0f} s through the shim, 8 clients, 1-32 instances per request")
    print(f"soak: {result.summary()}")
    print(f"soak: worker memory {memory_start:.0f} MB at start, {memory_end:.0f} MB at end "
          f"({memory_end - memory_start:+.0f} MB over {time.monotonic() - began:.0f} s)")
    for line in (result.mismatches + result.failures)[:10]:
        print(f"soak: {line}")
    return 1 if result.mismatches or result.errors or result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
