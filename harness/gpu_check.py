"""The GPU check (`make gpu-check`): serve a Learner on an NVIDIA GPU and hold its answers to the CPU's.

1. a small classifier Learner, made here, archived with make-archive;
2. scripts/serve on free loopback ports: TorchServe gives its worker the GPU;
3. the worker must report a GPU, and every probability through the shim must equal the
   Learner's on the CPU, in-process, within 1e-3;
4. then `make bench DEVICE=cuda QUICK=1`'s table.
Not part of CI (no GPU there). Exits non-zero, saying why, when anything differs.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from harness.learners import make_classifier
from harness.servers import ROOT, Servers, make_archive

TOLERANCE = 1e-3


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no CUDA device here; run it on a machine with an NVIDIA GPU")
    return torch.cuda.get_device_name(0)


def worker_uses_gpu(servers: Servers, model: str) -> bool:
    described = requests.get(f"{servers.management}/models/{model}", timeout=10).json()
    return any(worker.get("gpu") for version in described for worker in version.get("workers", []))


def served_probabilities(servers: Servers, model: str, images: list[bytes]) -> list[list[float]]:
    body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
    response = requests.post(f"{servers.shim}/v1/models/{model}:predict", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["predictions"]


def cpu_probabilities(learner: Path, images: list[bytes]) -> list[list[float]]:
    from fastai_serving.engine.learner import load_learner
    from harness.load import expected_probabilities

    return expected_probabilities(load_learner(learner, "cpu"), images)


def main() -> int:
    began = time.monotonic()
    print(f"gpu-check: {gpu_name()}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        learner = make_classifier(tmp / "learner")
        made = make_archive("gpu_check", learner, tmp / "store", "--max-batch", "64")
        if made.returncode != 0:
            raise SystemExit(f"gpu-check: make-archive failed:\n{made.stderr}")
        images = [path.read_bytes() for path in sorted((tmp / "learner" / "images").glob("*.png"))]
        servers = Servers(model_store=tmp / "store", log_dir=tmp / "logs").start(["gpu_check"])
        try:
            on_gpu = worker_uses_gpu(servers, "gpu_check")
            served = served_probabilities(servers, "gpu_check", images)
        finally:
            servers.stop()
        expected = cpu_probabilities(learner, images)
    largest = max(
        abs(a - b) for got, want in zip(served, expected, strict=True) for a, b in zip(got, want, strict=True)
    )
    print(
        f"gpu-check: worker on the GPU: {on_gpu}; {len(served)} images, largest difference from the CPU {largest:.2e}"
    )
    if not on_gpu or largest > TOLERANCE:
        print(f"gpu-check: FAILED (wanted the worker on the GPU and every probability within {TOLERANCE})")
        return 1
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", "cuda", "--quick"])
    print(
        f"gpu-check: {'passed' if bench.returncode == 0 else 'the benchmark failed'} in {time.monotonic() - began:.0f} s"
    )
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
