"""Serve every archive in a model store: TorchServe, and the TF-Serving shim in front of it.

Starts TorchServe (config.properties, log4j2.xml) and the shim (gunicorn, port 8501), prints
each model once it has a ready worker, stops both cleanly on Ctrl-C or SIGTERM, and exits
non-zero as soon as either dies on its own.
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
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model-store", type=Path, default=ROOT / "model_store", help="folder of .mar archives (default: model_store/)")
    add("--config", type=Path, default=ROOT / "config.properties", help="TorchServe config (default: config.properties)")
    add("--port", type=int, default=int(os.environ.get("FASTAI_SERVING_PORT", 8501)), help="the shim's port (default: 8501)")
    add("--shim-host", default=os.environ.get("FASTAI_SERVING_HOST", "0.0.0.0"), help="the shim's address (default: 0.0.0.0)")
    add("--default-model", default=os.environ.get("FASTAI_SERVING_DEFAULT_MODEL", ""),
        help="model behind /analyze (default: the only archive in the store)")
    add("--no-shim", action="store_true", help="serve TorchServe alone")
    add("--host", default="127.0.0.1", help="address of TorchServe's inference API (default: 127.0.0.1)")
    add("--inference-port", type=int, default=8080, help="TorchServe inference API (default: 8080)")
    add("--management-port", type=int, default=8081, help="TorchServe management API, always on 127.0.0.1 (default: 8081)")
    add("--metrics-port", type=int, default=8082, help="TorchServe metrics API, on 127.0.0.1 (default: 8082)")
    add("--grpc-ports", type=int, nargs=2, default=(7070, 7071), metavar=("INFERENCE", "MANAGEMENT"),
        help="TorchServe's gRPC APIs, unused here but always started, on 127.0.0.1 (default: 7070 7071)")
    add("--log-dir", type=Path, default=ROOT / "logs", help="TorchServe's log files (default: logs/)")
    return parser.parse_args(argv)


def archive_model_names(model_store: Path) -> list[str]:
    """The model names of the archives in the store, read from their manifests."""
    names = []
    for archive in sorted(model_store.glob("*.mar")):
        try:
            with zipfile.ZipFile(archive) as mar:
                names.append(json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"])
        except (zipfile.BadZipFile, KeyError, ValueError):
            names.append(archive.stem)
    return names


def torchserve_process(args: argparse.Namespace) -> subprocess.Popen:
    torchserve = Path(sys.executable).parent / "torchserve"
    command = [
        str(torchserve) if torchserve.exists() else "torchserve",
        "--start", "--foreground", "--ncs",
        "--model-store", str(args.model_store),
        "--ts-config", str(args.config),
        "--log-config", str(ROOT / "log4j2.xml"),
    ]  # fmt: skip
    run_dir = args.log_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "TS_INFERENCE_ADDRESS": f"http://{args.host}:{args.inference_port}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{args.management_port}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{args.metrics_port}",
        "TS_GRPC_INFERENCE_PORT": str(args.grpc_ports[0]),
        "TS_GRPC_MANAGEMENT_PORT": str(args.grpc_ports[1]),
        "LOG_LOCATION": str(args.log_dir),
        "METRICS_LOCATION": str(args.log_dir),
        # TorchServe keeps its pid file (TMPDIR) and its worker sockets (TEMP) in the temp
        # folder and refuses a second server beside them; a folder per run lets several
        # run side by side (tests, other ports).
        "TMPDIR": str(run_dir),
        "TEMP": str(run_dir),
    }
    return subprocess.Popen(command, env=environment, start_new_session=True)


def shim_process(args: argparse.Namespace, default_model: str) -> subprocess.Popen:
    environment = {
        **os.environ,
        "FASTAI_SERVING_UPSTREAM": f"http://127.0.0.1:{args.inference_port}",
        "FASTAI_SERVING_MANAGEMENT": f"http://127.0.0.1:{args.management_port}",
        "FASTAI_SERVING_DEFAULT_MODEL": default_model,
        "FASTAI_SERVING_PORT": str(args.port),
        "FASTAI_SERVING_HOST": args.shim_host,
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [str(gunicorn) if gunicorn.exists() else "gunicorn", "-c", str(ROOT / "shim" / "gunicorn.conf.py"), "shim.wsgi:app"]
    return subprocess.Popen(command, env=environment, cwd=ROOT, start_new_session=True)


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
    models = archive_model_names(args.model_store)
    default_model = args.default_model or (models[0] if len(models) == 1 else "")
    processes = {"TorchServe": torchserve_process(args)}
    if not args.no_shim:
        processes["shim"] = shim_process(args, default_model)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        print(f"serve: stopping ({signal.Signals(signum).name})", flush=True)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    announced: set[str] = set()
    exited, next_look = None, 0.0
    while not stopping and exited is None:
        exited = next((name for name, process in processes.items() if process.poll() is not None), None)
        if time.monotonic() >= next_look:
            models_ready = ready_models(args.management_port)
            for name in sorted(n for n, ready in models_ready.items() if ready and n not in announced):
                announced.add(name)
                _announce(args, name, default_model)
            # Often until every model is up, then now and again (a reload may register more).
            waiting = not models_ready or not all(models_ready.values())
            next_look = time.monotonic() + (0.5 if waiting else 5.0)
        time.sleep(0.2)
    for process in processes.values():
        _signal_group(process, signal.SIGTERM)
    for process in processes.values():
        _wait_for_group(process, timeout_s=30)
    if exited is not None:
        print(f"serve: {exited} exited on its own (code {processes[exited].returncode}); stopped the rest", file=sys.stderr)
        return processes[exited].returncode or 1
    return 0


def _announce(args: argparse.Namespace, name: str, default_model: str) -> None:
    where = f"http://{args.host}:{args.inference_port}/predictions/{name}"
    if not args.no_shim:
        shim = f"http://127.0.0.1:{args.port}"
        where += f", {shim}/v1/models/{name}:predict" + (f", {shim}/analyze:predict" if name == default_model else "")
    print(f"serve: {name} ready at {where}", flush=True)


def _wait_for_group(process: subprocess.Popen, timeout_s: float) -> None:
    """Let a process group shut down, then kill whatever is left of it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
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
