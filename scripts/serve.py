"""Serve every archive in a model store with TorchServe, in the foreground.

Starts TorchServe with the project's config.properties and log4j2.xml, prints each
model once it has a ready worker, stops cleanly on Ctrl-C or SIGTERM, and exits
non-zero if TorchServe dies on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-store", type=Path, default=ROOT / "model_store", help="folder of .mar archives (default: model_store/)"
    )
    parser.add_argument(
        "--config", type=Path, default=ROOT / "config.properties", help="TorchServe config (default: config.properties)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of the inference API (default: 127.0.0.1)")
    parser.add_argument("--inference-port", type=int, default=8080, help="TorchServe inference API (default: 8080)")
    parser.add_argument(
        "--management-port",
        type=int,
        default=8081,
        help="TorchServe management API, always on 127.0.0.1 (default: 8081)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8082, help="TorchServe metrics API, on 127.0.0.1 (default: 8082)"
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs", help="TorchServe's log files (default: logs/)")
    return parser.parse_args(argv)


def torchserve_command(args: argparse.Namespace) -> list[str]:
    torchserve = Path(sys.executable).parent / "torchserve"
    return [
        str(torchserve) if torchserve.exists() else "torchserve",
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(args.model_store),
        "--ts-config",
        str(args.config),
        "--log-config",
        str(ROOT / "log4j2.xml"),
    ]


def torchserve_environment(args: argparse.Namespace) -> dict[str, str]:
    """Addresses and log folder for this run; a private temp folder for TorchServe's pid file."""
    run_dir = args.log_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "TS_INFERENCE_ADDRESS": f"http://{args.host}:{args.inference_port}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{args.management_port}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{args.metrics_port}",
        "LOG_LOCATION": str(args.log_dir),
        "METRICS_LOCATION": str(args.log_dir),
        # TorchServe keeps its pid file (TMPDIR) and its worker sockets (TEMP) in the temp
        # folder and refuses a second server beside them; a folder per run lets several
        # run side by side (tests, other ports).
        "TMPDIR": str(run_dir),
        "TEMP": str(run_dir),
    }


def ready_models(management_port: int) -> dict[str, bool]:
    """Each registered model and whether it has a READY worker (TorchServe's /ping says Healthy too early)."""
    base = f"http://127.0.0.1:{management_port}/models"
    try:
        with urllib.request.urlopen(base, timeout=2) as response:
            names = [m["modelName"] for m in json.load(response)["models"]]
        ready = {}
        for name in names:
            with urllib.request.urlopen(f"{base}/{name}", timeout=2) as response:
                workers = [w for version in json.load(response) for w in version.get("workers", [])]
            ready[name] = any(w.get("status") == "READY" for w in workers)
        return ready
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return {}


def serve(args: argparse.Namespace) -> int:
    if not args.model_store.is_dir():
        print(f"serve: model store {args.model_store} is not a folder", file=sys.stderr)
        return 2
    args.model_store = args.model_store.resolve()
    args.log_dir = args.log_dir.resolve()
    process = subprocess.Popen(torchserve_command(args), env=torchserve_environment(args), start_new_session=True)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        print(f"serve: stopping TorchServe ({signal.Signals(signum).name})", flush=True)
        _signal_group(process, signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    announced: set[str] = set()
    while process.poll() is None:
        for name, ready in ready_models(args.management_port).items():
            if ready and name not in announced:
                announced.add(name)
                print(f"serve: {name} ready at http://{args.host}:{args.inference_port}/predictions/{name}", flush=True)
        time.sleep(1)
    if not stopping:
        print(f"serve: TorchServe exited on its own (code {process.returncode})", file=sys.stderr)
        return process.returncode or 1
    _wait_for_group(process, timeout_s=30)
    return 0


def _wait_for_group(process: subprocess.Popen, timeout_s: float) -> None:
    """Let TorchServe and its workers shut down, then kill whatever is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(serve(parse_args()))
