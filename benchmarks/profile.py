"""Where serving's CPU goes, process by process: the pipeline benchmark's near-free model under load, profiled.

Starts the near-free archive (benchmarks/pipeline.py's) with scripts/serve, warms it up, then runs a
load of CLIENTS clients × INSTANCES tiles through one front for SECONDS while it records
- every server process's threads and the CPU each took per image (from /proc: native work included);
- py-spy (`--gil`: the Python that held the interpreter) on TorchServe's worker and on the front's
  Python processes: the functions that took the most, by self time and with what they call;
- JDK Flight Recorder on TorchServe's Java frontend: its hottest Java frames (JIT-compiled code only;
  the threads table shows the rest: the compiler, the kernel's socket work).
Not a test. `python -m benchmarks.profile [--front shim|grpc|v2|direct] [--seconds 30] [-- make-archive flags]`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.loads import run_grpc_load, run_load, run_v2_load
from benchmarks.pipeline import GUARD, PROCESS_KINDS, WARM_UP_S, warm_up
from harness.servers import Servers, make_archive
from harness.workload import make_near_free_learner, make_tiles

TOP = 12
PY_SPY = str(Path(sys.executable).parent / "py-spy")  # requirements-dev.txt installs it beside Python


def server_processes(servers: Servers) -> dict[str, list[psutil.Process]]:
    """Each kind of server process (pipeline.PROCESS_KINDS), by the command line its processes run."""
    kinds: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for process in psutil.Process(servers.process.pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        kind = next((name for key, name in PROCESS_KINDS if key in command), None)
        if kind is not None and GUARD not in command:
            kinds[kind].append(process)
    return kinds


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of a process's threads, by thread name (a pool's threads summed)."""
    seconds: dict[str, float] = collections.defaultdict(float)
    ticks = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = re.sub(r"[-#_]?\d+", "", stat[stat.index("(") + 1 : stat.rindex(")")])
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[name] += (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    command = [PY_SPY, "record", "--gil", "-r", "97", "-d", str(seconds), "-p", str(pid), "-f", "raw", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, the top functions by self samples, by inclusive samples) of a py-spy raw (collapsed) file."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first is the thread
        total += int(count)
        if frames:
            own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return total, own.most_common(TOP), inclusive.most_common(TOP)


def java_frames(recording: Path) -> list[tuple[str, int]]:
    """The hottest top-of-stack Java frames of a JFR recording's execution samples."""
    printed = subprocess.run(["jfr", "print", "--events", "jdk.ExecutionSample", str(recording)], capture_output=True, text=True)  # fmt: skip
    frames = collections.Counter()
    for event in printed.stdout.split("jdk.ExecutionSample")[1:]:
        found = re.search(r"stackTrace = \[\s*\n\s*([\w$.<>]+)", event)
        if found:
            frames[found.group(1)] += 1
    return frames.most_common(TOP)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--front", choices=["shim", "grpc", "v2", "direct"], default="shim")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("archive_flags", nargs="*", help="make-archive flags for the near-free archive")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="profile-") as folder:
        tmp = Path(folder)
        made = make_archive("bench", make_near_free_learner(tmp / "nearfree"), tmp / "store", *args.archive_flags)
        if made.returncode != 0:
            raise SystemExit(f"profile: make-archive failed:\n{made.stderr}")
        servers = Servers(model_store=tmp / "store", log_dir=tmp / "logs").start(["bench"], timeout_s=600)
        try:
            profile(servers, args, tmp)
        finally:
            servers.stop()


def profile(servers: Servers, args: argparse.Namespace, tmp: Path) -> None:
    tiles = make_tiles(64, seed=3)
    load = {
        "shim": lambda: run_load(f"{servers.shim}/v1/models/bench:predict", tiles, args.clients, args.instances, 2),
        "direct": lambda: run_load(f"{servers.inference}/predictions/bench", tiles, args.clients, args.instances, 2,
                                   {"Content-Type": "application/json"}),
        "grpc": lambda: run_grpc_load(servers.grpc, tiles, args.clients, args.instances, 2),
        "v2": lambda: run_v2_load(servers.shim, tiles, args.clients, args.instances, 2),
    }[args.front]  # fmt: skip
    warm_up([load], WARM_UP_S[False])
    kinds = server_processes(servers)
    answered, stop = [0], threading.Event()

    def keep_loading() -> None:
        while not stop.is_set():
            answered[0] += load()[2]

    before = {p.pid: thread_seconds(p.pid) for processes in kinds.values() for p in processes}
    loader = threading.Thread(target=keep_loading)
    loader.start()
    spies = {
        f"{kind} {p.pid}": (py_spy(p.pid, args.seconds, tmp / f"spy-{p.pid}.txt"), tmp / f"spy-{p.pid}.txt")
        for kind, processes in kinds.items()
        if kind not in ("TorchServe frontend (Java)", "nginx (REST proxy)")
        for p in processes
    }
    java = kinds.get("TorchServe frontend (Java)", [])
    recording = tmp / "frontend.jfr"
    for process in java:
        subprocess.run(["jcmd", str(process.pid), "JFR.start", "name=profile", "settings=profile"], capture_output=True)
    began = time.monotonic()
    time.sleep(args.seconds)
    for process in java:
        subprocess.run(
            ["jcmd", str(process.pid), "JFR.stop", "name=profile", f"filename={recording}"], capture_output=True
        )
    after = {p.pid: thread_seconds(p.pid) for processes in kinds.values() for p in processes}
    images = answered[0]
    stop.set()
    loader.join()
    for spy, _ in spies.values():
        spy.wait(timeout=60)
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{args.front}: {images} images in about {time.monotonic() - began:.0f} s; load average {load_average}\n")
    print("| process | thread | CPU µs per image |\n|---|---|---|")
    for kind, processes in kinds.items():
        threads: dict[str, float] = collections.Counter()
        for process in processes:
            for name, seconds in after.get(process.pid, {}).items():
                threads[name] += seconds - before.get(process.pid, {}).get(name, 0.0)
        for name, seconds in sorted(threads.items(), key=lambda item: -item[1]):
            if seconds * 1e6 / max(images, 1) >= 5:
                print(f"| {kind} | {name} | {seconds * 1e6 / max(images, 1):.0f} |")
    for name, (_, raw) in spies.items():
        total, own, inclusive = top_functions(raw)
        print(f"\npy-spy --gil, {name}: {total} samples holding the GIL\n  self:")
        for frame, count in own:
            print(f"    {count * 100 / max(total, 1):5.1f}%  {frame}")
        print("  inclusive (less what runs under nearly every sample: the servers' own loops):")
        for frame, count in inclusive:
            if count > 0.5 * total:
                continue
            print(f"    {count * 100 / max(total, 1):5.1f}%  {frame}")
    if recording.exists():
        frames = java_frames(recording)
        print(f"\nJFR, TorchServe frontend: top Java frames of {sum(c for _, c in frames)} samples (JIT code only)")
        for frame, count in frames:
            print(f"  {count:5d}  {frame}")


if __name__ == "__main__":
    main()
