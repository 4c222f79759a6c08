"""Pack an exported fastai Learner into a TorchServe model archive (`<store>/<name>.mar`).

The archive holds the Learner's pickle (under its own file name), our handler and its
`fastai_serving` package, the optional utils folder of modules the pickle needs, and a
model config with the batching, worker and timeout settings below, and the Learner's kind
(vision, tabular, text or collab: found here by loading it; anything else is refused).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import fastai_serving
from fastai_serving import defaults
from fastai_serving.compiled.aot import AOT_DIR_IN_ARCHIVE, build_package
from fastai_serving.compiled.worker import batch_sizes, compile_learner
from fastai_serving.contract.errors import ModelError
from fastai_serving.contract.names import MODEL_NAME
from fastai_serving.engine.learner import PRECISIONS, ServedLearner, load_learner
from fastai_serving.engine.settings import HANDLER_KEY
from fastai_serving_scripts import HANDLER_FILE, MODEL_STORE

PACKAGE_DIR = Path(fastai_serving.__file__).resolve().parent  # the core, copied into the archive
UTILS_DIR_IN_ARCHIVE = "model_utils"

# The settings that are counts of at least 1: (flag, default, meaning).
COUNT_FLAGS = [
    ("--batch-size", defaults.BATCH_SIZE, "client requests TorchServe gathers into one batch"),
    ("--max-batch-delay", defaults.MAX_BATCH_DELAY_MS, "ms TorchServe waits to fill a batch"),
    ("--min-workers", defaults.MIN_WORKERS, "worker processes at start"),
    ("--max-workers", defaults.MAX_WORKERS, "worker processes at most"),
    ("--response-timeout", defaults.RESPONSE_TIMEOUT_S, "seconds a batch may take before the worker is restarted"),
    ("--startup-timeout", defaults.STARTUP_TIMEOUT_S, "seconds a worker may take to load (and compile) the model"),
    (
        "--max-batch",
        defaults.MAX_BATCH,
        "images or texts per forward pass; a bigger batch is cut into passes of this size",
    ),
    ("--max-row-batch", defaults.MAX_ROW_BATCH, "tabular and collab rows per forward pass"),
    ("--max-instances", defaults.MAX_INSTANCES, "instances one request may carry"),
    ("--max-text-chars", defaults.MAX_TEXT_CHARS, "characters one text instance may hold (text Learners)"),
]


def build_parser(prog: str = "make-archive") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="model name: the URL's /predictions/<name>")
    parser.add_argument("--learner", required=True, type=Path, help="the Learner's export.pkl")
    parser.add_argument("--utils", type=Path, help="folder of Python modules the pickle needs")
    parser.add_argument("--store", type=Path, default=MODEL_STORE, help="where the .mar goes (default: model_store/)")
    parser.add_argument("--version", default=defaults.MODEL_VERSION, help="model version (default: %(default)s)")
    for flag, default, meaning in COUNT_FLAGS:
        parser.add_argument(flag, type=int, default=default, help=f"{meaning} (default: %(default)s)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=defaults.TORCH_THREADS,
        help="torch threads per worker; 0: cores / workers (default)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.PRECISION,
        help="bf16: the fast path, bfloat16 autocast + channels-last, on CPUs with AVX512-BF16/AMX and on GPUs "
        "(argmax checked against fp32 by make bench); default fp32",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=defaults.CHANNELS_LAST,
        help="store the model's weights channels-last: same results to float rounding, about 20%% faster "
        "convolutions on CPU (default: on; --no-channels-last to turn off)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        choices=defaults.COMPILE_MODES,
        const=defaults.COMPILE_MODE,
        default=None,
        help="aot: compile the model here, once, with AOTInductor, checked against eager; workers load it "
        "without compiling (build the archive on the kind of machine that serves it). worker: torch.compile "
        "in every worker at start, warmed for every batch size, tried here first. Alone: %(const)s "
        "(default: off; docs/compile.md)",
    )
    parser.add_argument(
        "--compile-fallback",
        action="store_true",
        help="with --compile: if the model does not compile here, archive it eager instead of refusing",
    )
    parser.add_argument(
        "--fast-images",
        action=argparse.BooleanOptionalAction,
        default=defaults.FAST_IMAGES,
        help="vision: build each batch straight from the images where the Learner's transforms are all "
        "Resize/ToTensor/IntToFloatTensor/Normalize, equal to learn.predict (default: on; docs/pipeline.md)",
    )
    parser.add_argument(
        "--fast-rows",
        action=argparse.BooleanOptionalAction,
        default=defaults.FAST_ROWS,
        help="tabular and collab: apply FillMissing/Categorify/Normalize to a batch's rows vectorized, "
        "without a test_dl, equal to learn.predict (default: on; docs/pipeline.md)",
    )
    parser.add_argument(
        "--max-queue-s",
        type=float,
        default=defaults.MAX_QUEUE_S,
        help="seconds a request without a deadline of its own may wait in TorchServe's queue; past it, it is "
        "answered 504 when its batch starts, without inference (serve's FASTAI_SERVING_MAX_QUEUE_S overrides it; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--tensor-images",
        choices=defaults.TENSOR_IMAGES_CHOICES,
        default=defaults.TENSOR_IMAGES,
        help="vision, with the fast path: decode and resize each batch as tensors on the worker's device "
        "(torchvision, torch) instead of with PIL. auto: where the worker has a GPU (nvJPEG); on: on a CPU too, "
        "faster, answers within the bound docs/pipeline.md measures; off: PIL always (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive")
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "make-archive") -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse, with a clear message, what would make a broken or surprising archive."""
    if not MODEL_NAME.match(args.name):
        raise SystemExit(f"make-archive: --name {args.name!r}: use letters, digits, '_', '-' and '.'")
    if not args.learner.is_file():
        raise SystemExit(f"make-archive: --learner {args.learner}: no such file")
    if args.utils is not None and not args.utils.is_dir():
        raise SystemExit(f"make-archive: --utils {args.utils}: no such folder")
    for flag, _, _ in COUNT_FLAGS:
        if getattr(args, flag[2:].replace("-", "_")) < 1:
            raise SystemExit(f"make-archive: {flag} must be at least 1")
    if args.max_workers < args.min_workers:
        raise SystemExit("make-archive: --max-workers must be at least --min-workers")
    if not args.max_queue_s > 0:
        raise SystemExit("make-archive: --max-queue-s must be more than 0")
    archive = args.store / f"{args.name}.mar"
    if archive.exists() and not args.force:
        raise SystemExit(f"make-archive: {archive} exists; pass --force to overwrite it")


def model_config(args: argparse.Namespace, kind: str) -> dict:
    """The archive's model config: TorchServe's batching and workers, then our handler's settings."""
    return {
        "minWorkers": args.min_workers,
        "maxWorkers": args.max_workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": args.response_timeout,
        "startupTimeout": args.startup_timeout,
        HANDLER_KEY: {
            "kind": kind,
            "max_batch": args.max_batch,
            "max_row_batch": args.max_row_batch,
            "max_instances": args.max_instances,
            "max_text_chars": args.max_text_chars,
            "torch_threads": args.torch_threads,
            "utils_dir": UTILS_DIR_IN_ARCHIVE if args.utils else "",
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile == "worker",
            "aot_dir": AOT_DIR_IN_ARCHIVE if args.compile == "aot" else "",
            "fast_images": args.fast_images,
            "fast_rows": args.fast_rows,
            "max_queue_s": args.max_queue_s,
            "tensor_images": args.tensor_images,
        },
    }


def stage_extra_files(staging: Path, utils: Path | None) -> None:
    """The handler's package and the user's utils folder, laid out as in the archive."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE_DIR, staging / "fastai_serving", ignore=ignore)
    if utils is not None:
        shutil.copytree(utils, staging / UTILS_DIR_IN_ARCHIVE, ignore=ignore)


def try_compile(args: argparse.Namespace, served: ServedLearner) -> None:
    """Compile the model once here, as a worker will; refuse, or with --compile-fallback archive it eager, if it fails."""
    print(f"make-archive: compiling the model for batch sizes {list(batch_sizes(args.max_batch))} (minutes, once)")
    report = compile_learner(served, args.max_batch)
    if report.compiled:
        print(
            f"make-archive: it compiles ({report.seconds:.0f} s here); each worker compiles it before taking requests"
        )
    else:
        _compile_failed(args, report.error)


def try_aot(args: argparse.Namespace, served: ServedLearner, folder: Path) -> None:
    """Compile the model ahead of time into `folder` (checked against eager); refuse, or fall back, if it fails."""
    print(f"make-archive: compiling the model ahead of time for batches of 1 to {args.max_batch} (a minute, once)")
    report = build_package(served, args.max_batch, folder)
    if report.compiled:
        built_for = ", ".join(f"{key} {value}" for key, value in report.built_for.items() if value)
        print(
            f"make-archive: it compiles ({report.seconds:.0f} s here) and answers as eager; built for {built_for}: "
            "workers on another kind of machine serve it eager"
        )
    else:
        shutil.rmtree(folder, ignore_errors=True)
        _compile_failed(args, report.error)


def _compile_failed(args: argparse.Namespace, error: str) -> None:
    if not args.compile_fallback:
        raise SystemExit(
            f"make-archive: --compile {args.compile}: the model does not compile ({error}); "
            "archive it without --compile, or pass --compile-fallback to archive it eager"
        )
    print(f"make-archive: it does not compile ({error}); archiving it eager (--compile-fallback)")
    args.compile = None


def make_archive(args: argparse.Namespace) -> Path:
    check_args(args)
    try:
        # Loaded once, as a worker loads it (precision, layout): detected, then compiled from the same copy.
        served = load_learner(
            args.learner, "cpu", args.utils.resolve() if args.utils else None, args.precision, args.channels_last
        )
    except ModelError as error:
        raise SystemExit(f"make-archive: {error}") from None
    print(f"make-archive: {args.learner.name}: {served.kind} {served.task}, {_outputs(served)}")
    if args.compile == "worker":
        try_compile(args, served)
    args.store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="make-archive-") as tmp:
        staging = Path(tmp) / "extra"
        stage_extra_files(staging, args.utils)
        if args.compile == "aot":
            try_aot(args, served, staging / AOT_DIR_IN_ARCHIVE)
        config_file = Path(tmp) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config(args, served.kind), sort_keys=False))
        command = [
            sys.executable,
            "-c",
            "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name",
            args.name,
            "--version",
            args.version,
            "--serialized-file",
            str(args.learner),
            "--handler",
            str(HANDLER_FILE),
            "--extra-files",
            str(staging),
            "--config-file",
            str(config_file),
            "--export-path",
            str(args.store),
            "--force",
        ]
        # torch-model-archiver stages the files in TMPDIR/<model name>, deleting what was there first: in our own
        # temp folder, another make-archive of the same name (or a user's folder of that name) is left alone.
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": tmp})
    if result.returncode != 0:
        raise SystemExit(f"make-archive: torch-model-archiver failed:\n{result.stderr or result.stdout}")
    archive = args.store / f"{args.name}.mar"
    print(f"make-archive: wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return archive


def _outputs(served: ServedLearner) -> str:
    """What the model answers, for make-archive's one line: its classes, or its targets."""
    if served.classes:
        return f"{len(served.classes)} classes"
    if served.targets:
        return f"target(s) {', '.join(served.targets)}"
    return "values"


def main(argv: list[str] | None = None, prog: str = "make-archive") -> None:
    make_archive(parse_args(argv, prog))


if __name__ == "__main__":
    main()
