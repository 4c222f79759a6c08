"""Two REST shims side by side, an earlier commit's and the checkout's, in front of one TorchServe.

A change to the fronts' per-request work is a fraction of a millisecond, and this project's machines drift by
more than that between two runs of the pipeline table. Here both shims run at once, behind the same TorchServe
and the near-free model (benchmarks/pipeline.py's), and the requests alternate between them one by one, so
the machine's drift falls on both alike. For each request size it prints each shim's p50 and the CPU its
processes took per request (psutil, gunicorn's master and worker).

The earlier commit's `shim/` and `handler/fastai_serving/` are taken with `git archive` and put first on the
earlier shim's PYTHONPATH; everything else (gunicorn, the libraries) is the checkout's environment.
Not a test. `python -m benchmarks.shims_side_by_side [--before REV] [--requests 200] [--sizes 1 8]`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.loads import request_body
from harness import PROJECT_ROOT
from harness.servers import Servers, make_archive, start_shim
from harness.workload import make_near_free_learner, make_tiles

WARM_UP_REQUESTS = 30  # a shim's first requests fill its caches and connections: sent, not counted
PACKAGES = {"shim": "fastai_serving_shim", "handler/fastai_serving": "fastai_serving"}  # folder: import name


def packages_at(revision: str, into: Path) -> Path:
    """The shim's and the core's packages as `revision` had them, importable from `into`."""
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", revision, *PACKAGES], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into / "tree", filter="data")
    for folder, name in PACKAGES.items():
        (into / "tree" / folder).rename(into / name)
    return into


def measure(shims: dict[str, tuple[int, str]], body: bytes, requests: int) -> dict[str, tuple[float, float]]:
    """Each shim's (p50 ms, its processes' CPU ms per request), the requests alternated between them.
    `shims`: each one's gunicorn master's pid and its URL."""
    processes = {}
    for name, (pid, _) in shims.items():
        master = psutil.Process(pid)
        processes[name] = [master, *master.children(recursive=True)]
    connections = {name: http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1])) for name, (_, url) in shims.items()}  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in shims}
    cpu = dict.fromkeys(shims, 0.0)
    for index in range(WARM_UP_REQUESTS + requests):
        for name, connection in connections.items():
            before, began = _cpu(processes[name]), time.perf_counter()
            connection.request("POST", "/v1/models/bench:predict", body=body)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"shims_side_by_side: the {name} shim answered {response.status}")
            if index >= WARM_UP_REQUESTS:
                walls[name].append((time.perf_counter() - began) * 1000)
                cpu[name] += _cpu(processes[name]) - before
    return {name: (statistics.median(walls[name]), cpu[name] / requests * 1000) for name in shims}


def _cpu(processes: list[psutil.Process]) -> float:
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shims_side_by_side", description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="the earlier commit (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="requests counted per shim and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="tiles per request")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        made = make_archive("bench", make_near_free_learner(tmp / "nearfree"), tmp / "store")
        if made.returncode != 0:
            raise SystemExit(f"shims_side_by_side: make-archive failed:\n{made.stderr}")
        earlier = packages_at(args.before, tmp / "before")
        servers = Servers(model_store=tmp / "store", log_dir=tmp / "logs", with_shim=False).start(["bench"])
        started, own_path = [], os.environ.get("PYTHONPATH")
        try:
            shims = {}
            for name, path in ((f"before ({args.before})", str(earlier)), ("now (the checkout)", own_path)):
                os.environ.pop("PYTHONPATH", None)
                os.environ.update({"PYTHONPATH": path} if path else {})
                process, url = start_shim(
                    tmp / f"shim-{len(started)}",
                    upstream=servers.inference,
                    management=servers.management,
                    default_model="bench",
                    workers="1",
                )
                started.append(process)
                shims[name] = (process.pid, url)
            print(f"\ntwo REST shims in front of one TorchServe, requests alternated ({args.requests} each)\n")
            print(f"| {'tiles a request':>15} | {'shim':<28} | {'p50 ms':>7} | {'shim CPU ms a request':>21} |")
            print(f"|{'-' * 17}|{'-' * 30}|{'-' * 9}|{'-' * 23}|")
            for size in args.sizes:
                results = measure(shims, request_body(make_tiles(size)), args.requests)
                for name, (p50, cpu_ms) in results.items():
                    print(f"| {size:>15} | {name:<28} | {p50:7.2f} | {cpu_ms:21.2f} |")
        finally:
            os.environ.pop("PYTHONPATH", None)
            os.environ.update({"PYTHONPATH": own_path} if own_path else {})
            for process in started:
                process.terminate()
                process.wait(30)
            servers.stop()


if __name__ == "__main__":
    main()
