"""Soak: minutes of checked, mixed-size concurrent load through the shim; bounded, then a summary.

Every answer is compared with the Learner's in-process prediction for its own images. Prints
requests, errors, mismatched predictions, p99 latency, and worker memory each minute.
Length: SOAK_S seconds (default 300, any positive number). Exits non-zero on any mismatch or
error. Run: `make soak`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from harness.load import LoadResult, expected_probabilities, merge, rounds, run_checked_load
from harness.servers import Servers, make_archive


def worker_rss_mb(servers: Servers, model: str) -> float:
    described = requests.get(f"{servers.management}/models/{model}", timeout=5).json()
    pids = [int(w["pid"]) for version in described for w in version["workers"] if w.get("pid")]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def main() -> int:
    from fastai_serving.engine.learner import load_learner
    from fastai_serving_scripts.demo import train_digits

    try:
        spans = rounds(float(os.environ.get("SOAK_S", 300)))
    except ValueError as error:
        print(f"soak: SOAK_S={os.environ.get('SOAK_S')!r}: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        export_path, _ = train_digits(tmp / "demo")
        assert make_archive("digits", export_path, tmp / "store").returncode == 0
        images = [path.read_bytes() for path in sorted((tmp / "demo" / "images").rglob("*.png"))[:200]]
        expected = expected_probabilities(load_learner(export_path), images)
        servers = Servers(model_store=tmp / "store", log_dir=tmp / "logs").start(["digits"])
        try:
            url = f"{servers.shim}/v1/models/digits:predict"
            run_checked_load(url, images, expected, clients=2, requests_per_client=5)  # warm-up
            memory = [worker_rss_mb(servers, "digits")]
            began = time.monotonic()
            result = LoadResult()
            # In rounds of at most a minute, so worker memory is sampled along the way.
            for round_index, span in enumerate(spans, start=1):
                merge(result, run_checked_load(url, images, expected, clients=8, duration_s=span, seed=round_index))
                memory.append(worker_rss_mb(servers, "digits"))
        finally:
            servers.stop()
    print(f"soak: {sum(spans):.0f} s through the shim, 8 clients, 1-32 instances per request")
    print(f"soak: {result.summary()}")
    print(f"soak: worker memory {memory[0]:.0f} MB at start, {memory[-1]:.0f} MB at end "
          f"({memory[-1] - memory[0]:+.0f} MB over {time.monotonic() - began:.0f} s); "
          f"each round: {', '.join(f'{m:.0f}' for m in memory)} MB")  # fmt: skip
    for line in (result.mismatches + result.failures)[:10]:
        print(f"soak: {line}")
    return 1 if result.mismatches or result.errors or result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
