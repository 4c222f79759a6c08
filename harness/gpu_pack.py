"""`make gpu-pack`: everything an offline GPU machine needs for stage one of the GPU check, in build/gpu-pack/.

The machine brings its own Python 3.12, torch with CUDA, numpy, pandas, pillow, matplotlib,
scipy, scikit-learn and the rest of DEVICE_PACKAGES, and reaches no package index. The pack holds:
- wheels/: for Python 3.12, every distribution that importing fastai's vision and tabular
  Learners and this project's core loads, less what the machine has (fastai, fastcore,
  fasttransform, plum-dispatch, ...: pure Python, found from what this environment imports);
- fastai_serving/: the engine-independent core, as make-archive puts it in an archive;
- near_free/export.pkl (the pipeline benchmark's near-free Learner), tiles/*.jpg, stage_one.py.
It must stay under the device tool's 64 MiB a call; `make gpu-check` there installs the wheels
into a folder and runs stage_one.py (harness/gpu_stage_one.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import PROJECT_ROOT

PACK = PROJECT_ROOT / "build" / "gpu-pack"
LIMIT_BYTES = 64 * 1024 * 1024
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
# What the lent GPU machines hold already (the device tool's KINDS.md, read 2026-11-17): carried only if missing.
DEVICE_PACKAGES = set(
    """absl-py accelerate aiohttp anyio attrs certifi charset-normalizer click cloudpickle contourpy cycler filelock
    fonttools fsspec grpcio h11 httpcore httpx idna jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib
    mdurl mpmath narwhals networkx numpy packaging pandas pillow pip prometheus-client protobuf psutil pygments
    pyparsing python-dateutil pyyaml regex requests rich safetensors scikit-learn scipy setuptools six sympy
    threadpoolctl torch torchvision tqdm triton typing-extensions urllib3 werkzeug cuda-bindings cuda-pathfinder
    cuda-toolkit wheel""".split()
)
OURS = {"fastai-serving", "fastai-serving-client"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, str]:
    """Each distribution (name -> version) that importing fastai's Learners and the core loads, in a fresh process."""
    code = (
        "import sys, json, importlib.metadata as md\n"
        "import fastai.vision.all, fastai.tabular.all, fastai.collab\n"
        "import fastai_serving.engine.learner, fastai_serving.engine.batching, fastai_serving.compiled.worker\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "owners = md.packages_distributions()\n"
        "print(json.dumps(sorted({d for t in tops for d in owners.get(t, [])})))\n"
    )
    import json

    names = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return {normalized(name): metadata.version(name) for name in names}


def carried(distributions: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in distributions.items() if name not in DEVICE_PACKAGES | OURS}


def download_wheels(wanted: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
               "-d", str(folder), *(f"{name}=={version}" for name, version in sorted(wanted.items()))]  # fmt: skip
    subprocess.run(command, check=True)


def size_of(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def make_pack(out: Path = PACK) -> Path:
    from harness.workload import make_near_free_learner, make_tiles

    shutil.rmtree(out, ignore_errors=True)
    wanted = carried(imported_distributions())
    print(f"gpu-pack: carrying {len(wanted)} wheels: {', '.join(sorted(wanted))}")
    download_wheels(wanted, out / "wheels")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "handler" / "fastai_serving", out / "fastai_serving", ignore=ignore)
    shutil.copy2(Path(__file__).with_name("gpu_stage_one.py"), out / "stage_one.py")
    make_near_free_learner(out / "near_free")
    for stray in (out / "near_free").glob("train_*.jpg"):
        stray.unlink()  # the Learner's training tiles: the pickle needs none of them
    (out / "tiles").mkdir()
    for index, tile in enumerate(make_tiles(32, seed=7)):
        (out / "tiles" / f"{index:02d}.jpg").write_bytes(tile)
    size = size_of(out)
    print(f"gpu-pack: {out} holds {size / 2**20:.1f} MiB (the device takes {LIMIT_BYTES // 2**20} MiB a call)")
    if size > LIMIT_BYTES:
        raise SystemExit("gpu-pack: over the limit: carry fewer wheels")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-pack", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACK)
    make_pack(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
