"""Overload: what one server answers at three times its capacity, how soon it recovers, and predict-batch's concurrency.

On one `scripts/serve` (the benchmark's resnet34 Learner at 224², 8 tiles of 256×256 JPEG a request):
  (a) capacity   8 closed-loop REST clients, images answered per second (the steady part of the run)
  (b) storms     open-loop Poisson arrivals at 3× that capacity, each request with a 5 s deadline, for --storm-s:
                 over gRPC (TF Serving's Predict with a 5 s gRPC deadline) and over REST (the client's own 5 s
                 timeout only, no deadline header, as most REST clients send). Goodput: images answered within
                 their deadline per second of the storm, ÷ the capacity; every request counted as answered in
                 time, late, refused (REST 429 or 503, gRPC RESOURCE_EXHAUSTED or UNAVAILABLE, with its latency),
                 timed out (the client's timeout, the server's 504 or DEADLINE_EXCEEDED) or other
  (c) recovery   after each storm's last arrival, fresh single requests of one tile (2 s deadline each, one after
                 the other) until one is answered within 2 s: the seconds from the storm's end to that answer
  (d) predict-batch over a folder of tiles with its default flags (adaptive concurrency) and with --concurrency
                 1, 2, 4, 8, 16, 32, 64, in two passes (the second in reverse order, so a drifting load falls on each
                 alike): images/s over both runs and failed images, against this server and against a near-free
                 model (pooling + linear: serving's own cost), where the best fixed concurrency is higher
Each figure is printed with the machine's load average (1 minute) over its measurement: on a shared machine a
busy neighbour moves every number. One table. Not a test: `make overload` (QUICK=1: a short run).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import requests

from fastai_serving_protos import tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.servers import ROOT, Servers, make_archive
from harness.workload import make_learner, make_near_free_learner, make_tiles

MODEL = "bench"
INSTANCES = 8  # tiles per request: chip-n-scale's shape
CLIENTS = 8  # the capacity's closed-loop REST clients
OVERLOAD = 3.0  # the storms' arrival rate, times the capacity
DEADLINE_S = 5.0  # each storm request's deadline (gRPC) or timeout (REST)
RECOVERED_S = 2.0  # recovered: a fresh single request answered within this
RECOVERY_GIVE_UP_S = 300.0  # a server not recovered by then is reported as such
FIXED = (1, 2, 4, 8, 16, 32, 64)  # predict-batch's fixed concurrencies, all measured in one run
REFUSED_REST = (429, 503)
REFUSED_GRPC = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class Load:
    """The machine's 1-minute load average over a measurement: its mean of samples every second."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(1.0):
                return

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return f"{statistics.mean(self.samples):.1f}" if self.samples else "?"


# --- requests --------------------------------------------------------------------------------------------------------


def rest_bodies(tiles: list[bytes], count: int, instances: int) -> list[bytes]:
    """`count` REST bodies of `instances` tiles each, chip-n-scale's row form."""
    return [
        json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(tiles[(i * instances + k) % len(tiles)]).decode()}}
                                  for k in range(instances)]}).encode()
        for i in range(count)
    ]  # fmt: skip


def grpc_requests(tiles: list[bytes], count: int, instances: int) -> list[tensorflow_serving_pb2.PredictRequest]:
    """`count` TF Serving PredictRequests of `instances` raw tiles each (a DT_STRING tensor under image_bytes)."""
    made = []
    for i in range(count):
        chosen = [tiles[(i * instances + k) % len(tiles)] for k in range(instances)]
        shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(chosen))])
        images = TensorProto(dtype=DataType.DT_STRING, tensor_shape=shape, string_val=chosen)
        made.append(tensorflow_serving_pb2.PredictRequest(model_spec={"name": MODEL}, inputs={"image_bytes": images}))
    return made


@dataclass
class Outcome:
    """One request's fate: answered (in time or late), refused, timed out, or another error; and its latency."""

    kind: str
    latency_s: float


class Sender:
    """Sends one request with a deadline over REST or gRPC and says how it went."""

    def __init__(self, servers: Servers, protocol: str, tiles: list[bytes]) -> None:
        self.protocol = protocol
        self.url = f"{servers.shim}/v1/models/{MODEL}:predict"
        self.bodies = rest_bodies(tiles, 16, INSTANCES) if protocol == "rest" else grpc_requests(tiles, 16, INSTANCES)
        # A probe is one tile: fresh single requests that, timed out, add little to a backlog they measure.
        self.probes = rest_bodies(tiles, 4, 1) if protocol == "rest" else grpc_requests(tiles, 4, 1)
        self._local = threading.local()
        if protocol == "grpc":
            self.channel = grpc.insecure_channel(servers.grpc)
            self.stub = tensorflow_serving_pb2_grpc.PredictionServiceStub(self.channel)

    def send(self, index: int, deadline_s: float, probe: bool = False) -> Outcome:
        bodies = self.probes if probe else self.bodies
        began = time.perf_counter()
        kind = self._send(bodies[index % len(bodies)], deadline_s)
        latency = time.perf_counter() - began
        if kind == "answered":
            kind = "in time" if latency <= deadline_s else "late"
        return Outcome(kind, latency)

    def _send(self, body, deadline_s: float) -> str:
        if self.protocol == "rest":
            if not hasattr(self._local, "session"):
                self._local.session = requests.Session()
            try:
                response = self._local.session.post(self.url, data=body, timeout=deadline_s)
            except requests.Timeout:
                return "timed out"
            except requests.RequestException:
                return "other"
            if response.status_code == 200:
                return "answered"
            if response.status_code in REFUSED_REST:
                return "refused"
            return "timed out" if response.status_code == 504 else "other"
        try:
            self.stub.Predict(body, timeout=deadline_s)
            return "answered"
        except grpc.RpcError as error:
            if error.code() in REFUSED_GRPC:
                return "refused"
            return "timed out" if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "other"

    def close(self) -> None:
        if self.protocol == "grpc":
            self.channel.close()


# --- (a) capacity ----------------------------------------------------------------------------------------------------


def capacity(servers: Servers, tiles: list[bytes], seconds: float) -> tuple[float, float, Load]:
    """CLIENTS closed-loop REST clients: (images/s, p50 latency s, load) over at least `seconds` and 3 rounds of the
    clients, counted from when every client has had its first answer (the ramp left out) to the last answer."""
    sender = Sender(servers, "rest", tiles)
    for index in range(2):
        sender.send(index, 600)  # warm-up
    finished: list[tuple[int, float, float]] = []  # (client, time answered, latency)
    lock, stop = threading.Lock(), threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            outcome = sender.send(index, 600)
            if outcome.kind != "in time":
                stop.set()
                raise SystemExit(f"overload: the capacity's client got {outcome.kind}")
            with lock:
                finished.append((index, time.perf_counter(), outcome.latency_s))

    def steady_from() -> float | None:
        firsts = {}
        for index, at, _ in finished:
            firsts.setdefault(index, at)
        return max(firsts.values()) if len(firsts) == CLIENTS else None

    with Load() as load, ThreadPoolExecutor(CLIENTS) as pool:
        running = [pool.submit(client, index) for index in range(CLIENTS)]
        while not stop.is_set():
            time.sleep(0.5)
            with lock:
                begun = steady_from()
                after = [at for _, at, _ in finished if begun is not None and at > begun]
            if begun is not None and len(after) >= 3 * CLIENTS and after[-1] - begun >= seconds:
                stop.set()
                stopped = after[-1]  # what is answered after this had fewer clients beside it: left out
        for future in running:
            future.result()
    answered = [(at, latency) for _, at, latency in finished if begun < at <= stopped]
    window = max(at for at, _ in answered) - begun
    return len(answered) * INSTANCES / window, statistics.median(latency for _, latency in answered), load


# --- (b) storms and (c) recovery -------------------------------------------------------------------------------------


@dataclass
class Storm:
    protocol: str
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    recovery_s: float = float("nan")
    probes: int = 0
    load: Load | None = None
    recovery_load: Load | None = None

    def count(self, kind: str) -> int:
        return sum(outcome.kind == kind for outcome in self.outcomes)

    @property
    def goodput(self) -> float:
        return self.count("in time") * INSTANCES / self.seconds

    def refusal_ms(self, q: float) -> float:
        times = sorted(o.latency_s * 1000 for o in self.outcomes if o.kind == "refused")
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")


def storm(servers: Servers, protocol: str, tiles: list[bytes], rate: float, seconds: float, seed: int) -> Storm:
    """Poisson arrivals of `rate` requests/s for `seconds`, each with DEADLINE_S; then recovery probes."""
    sender = Sender(servers, protocol, tiles)
    sender.send(0, 600)  # warm-up: the connection and the server's caches
    result = Storm(protocol, seconds)
    lock = threading.Lock()
    arrivals = random.Random(seed)
    pool = ThreadPoolExecutor(int(rate * DEADLINE_S * 4) + 16)  # never the bottleneck: arrivals stay open-loop

    def one(index: int) -> None:
        outcome = sender.send(index, DEADLINE_S)
        with lock:
            result.outcomes.append(outcome)

    with Load() as load:
        start = time.perf_counter()
        at, index = start, 0
        while True:
            at += arrivals.expovariate(rate)
            if at >= start + seconds:
                break
            time.sleep(max(0.0, at - time.perf_counter()))
            pool.submit(one, index)
            index += 1
        ended = start + seconds
        result.load = load
    with Load() as recovery_load:
        result.recovery_s, result.probes = recover(sender, ended)
        result.recovery_load = recovery_load
    pool.shutdown(wait=True)  # the storm's last requests end within their deadline
    sender.close()
    return result


def recover(sender: Sender, since: float) -> tuple[float, int]:
    """Single requests, one after another, each with RECOVERED_S, until one is answered in time: (seconds from
    `since` to that answer, probes sent)."""
    probes = 0
    while time.perf_counter() - since < RECOVERY_GIVE_UP_S:
        probes += 1
        if sender.send(probes, RECOVERED_S, probe=True).kind == "in time":
            return time.perf_counter() - since, probes
        time.sleep(0.1)  # a refusal comes back in milliseconds: do not spin on it
    return float("inf"), probes


def settle(servers: Servers, tiles: list[bytes]) -> None:
    """Until three single requests in a row are answered within RECOVERED_S: no backlog before the next phase."""
    sender = Sender(servers, "rest", tiles)
    in_a_row, give_up = 0, time.perf_counter() + RECOVERY_GIVE_UP_S
    while in_a_row < 3 and time.perf_counter() < give_up:
        if sender.send(in_a_row, RECOVERED_S, probe=True).kind == "in time":
            in_a_row += 1
        else:
            in_a_row = 0
            time.sleep(0.5)  # not ready yet: a refusal or an error comes back at once, do not spin on it
    sender.close()


# --- (d) predict-batch -----------------------------------------------------------------------------------------------


@dataclass
class BatchRun:
    """One predict-batch configuration: each of its runs' images/s, failed images, concurrency line and load."""

    label: str
    rates: list[float] = field(default_factory=list)
    failed: int = 0
    concurrency: list[str] = field(default_factory=list)
    loads: list[Load] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Over all its runs: their images (the same count each) over their summed seconds."""
        return len(self.rates) / sum(1 / rate for rate in self.rates) if self.rates and all(self.rates) else 0.0


SUMMARY = re.compile(r"images, done (\d+), skipped \d+ \(done before\), failed (\d+), ([\d.]+) images/s")
SETTLED = re.compile(r"predict-batch: (concurrency [^;\n]*)")


def predict_batch(servers: Servers, folder: Path, out: Path, flags: list[str], row: BatchRun) -> None:
    """One predict-batch run over `folder` into a fresh `out`, added to `row`."""
    command = [str(ROOT / "scripts" / "predict-batch"), str(folder), "--server", servers.shim, "--out", str(out)]
    command += ["--batch", str(INSTANCES), *flags]
    with Load() as load:
        ran = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    summary = SUMMARY.search(ran.stderr)
    if not summary:
        raise SystemExit(f"overload: predict-batch {' '.join(flags)} gave no summary (exit {ran.returncode}):\n"
                         f"{ran.stderr[-2000:]}")  # fmt: skip
    settled = SETTLED.search(ran.stderr)
    row.rates.append(float(summary.group(3)))
    row.failed += int(summary.group(2))
    row.concurrency.append(settled.group(1) if settled else " ".join(flags))
    row.loads.append(load)


def predict_batch_rows(
    servers: Servers, tiles: list[bytes], count: int, folder: Path, model: str, passes: int
) -> list[BatchRun]:
    """predict-batch over `count` tiles with default flags and with each fixed concurrency, in `passes` passes,
    the second in the reverse order (a load that drifts over the passes falls on each alike)."""
    images = folder / f"tiles-{model}"
    images.mkdir(parents=True)
    for index in range(count):
        (images / f"{index:05d}.jpg").write_bytes(tiles[index % len(tiles)])
    flags = {"default": []} | {f"--concurrency {n}": ["--concurrency", str(n)] for n in FIXED}
    rows = {label: BatchRun(label) for label in flags}
    for number in range(passes):
        for label in list(flags) if number % 2 == 0 else reversed(flags):
            row = rows[label]
            predict_batch(
                servers, images, folder / f"{model}-{label.replace(' ', '')}-{number}.jsonl", flags[label], row
            )
            print(f"overload: {model}: predict-batch {label}: {row.rates[-1]:.1f} images/s, {row.failed} failed, "
                  f"{row.concurrency[-1]} (load {row.loads[-1]})", flush=True)  # fmt: skip
    return list(rows.values())


# --- the run ---------------------------------------------------------------------------------------------------------


def serve(store: Path, logs: Path, flags: list[str]) -> Servers:
    return Servers(model_store=store, log_dir=logs, flags=flags).start([MODEL], timeout_s=600)


def archive(store: Path, learner: Callable[[], Path], name: str) -> None:
    """The model's archive in `store`, made (Learner and all) unless a kept work folder holds it already."""
    if (store / f"{MODEL}.mar").exists():
        print(f"overload: the {name} archive kept in {store}", flush=True)
        return
    print(f"overload: making the {name} Learner and archiving it", flush=True)
    made = make_archive(MODEL, learner(), store)
    if made.returncode != 0:
        raise SystemExit(f"overload: make-archive failed:\n{made.stderr}")


def print_table(capacity_row: tuple[float, float, Load], storms: list[Storm], batches: dict[str, list[BatchRun]],
                machine: str, storm_rate: float) -> None:  # fmt: skip
    per_s, p50, load = capacity_row
    print(f"\n{machine}\n")
    print("| measure | result | ratio | detail | load |")
    print("|---|---|---|---|---|")
    print(f"| (a) capacity, {CLIENTS} closed-loop REST clients | {per_s:.1f} images/s | 1.00 "
          f"| {INSTANCES} tiles a request, p50 {p50:.2f} s | {load} |")  # fmt: skip
    for run in storms:
        name = "gRPC, 5 s deadline" if run.protocol == "grpc" else "REST, 5 s client timeout"
        counts = ", ".join(f"{run.count(kind)} {kind}" for kind in ("in time", "late", "refused", "timed out", "other"))
        print(f"| (b) storm {name}: goodput | {run.goodput:.1f} images/s | {run.goodput / per_s:.2f} "
              f"| {len(run.outcomes)} requests in {run.seconds:.0f} s ({storm_rate:.1f}/s): {counts}; refusal "
              f"p50 {run.refusal_ms(0.5):.0f} ms, p99 {run.refusal_ms(0.99):.0f} ms | {run.load} |")  # fmt: skip
        print(f"| (c) recovery after the {run.protocol.upper()} storm | {run.recovery_s:.1f} s | "
              f"| first single one-tile request answered within {RECOVERED_S:.0f} s, after {run.probes} tries "
              f"| {run.recovery_load} |")  # fmt: skip
    for model, rows in batches.items():
        best = max((row for row in rows if row.label != "default"), key=lambda row: row.images_per_s)
        for row in rows:
            ratio = row.images_per_s / best.images_per_s
            runs = ", ".join(f"{rate:.1f}" for rate in row.rates)
            said = "; ".join(dict.fromkeys(row.concurrency))
            print(f"| (d) predict-batch, {model}, {row.label} | {row.images_per_s:.1f} images/s | {ratio:.2f} "
                  f"| runs {runs}; {row.failed} failed; {said} | {', '.join(map(str, row.loads))} |")  # fmt: skip
    print(f"\nratios: (b) ÷ capacity; (d) ÷ the best fixed concurrency of the same model ({', '.join(map(str, FIXED))}); "
          "load: the 1-minute load average over each measurement (the machine's cores: "
          f"{os.cpu_count()})")  # fmt: skip


def machine_description() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "?")  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes): shorter storms, fewer tiles")
    parser.add_argument("--storm-s", type=float, default=None, help="each storm's seconds (default 40; --quick 15)")
    parser.add_argument(
        "--serve", action="append", default=[], metavar="FLAG",
        help="a scripts/serve flag for the server (repeat; e.g. --serve=--some-flag --serve=VALUE)",
    )  # fmt: skip
    parser.add_argument(
        "--only", choices=["storms", "predict-batch"], help="one part: (a)-(c), or (d) (which measures no capacity)"
    )
    parser.add_argument(
        "--passes", type=int, default=None, help="predict-batch passes over every configuration (default 2; --quick 1)"
    )
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR",
        help="keep the Learners and archives here and reuse them in the next run (default: a temporary folder)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers are stopped too (finally)
    storm_s = args.storm_s or (15.0 if args.quick else 40.0)
    capacity_s = 10.0 if args.quick else 30.0
    tiles_resnet, tiles_free = (160, 800) if args.quick else (800, 6400)
    passes = args.passes or (1 if args.quick else 2)
    tiles = make_tiles(64, seed=5)
    with tempfile.TemporaryDirectory(prefix="overload-") as scratch:
        tmp, kept = Path(scratch), args.workdir or Path(scratch)
        archive(kept / "store", lambda: make_learner(kept / "learner"), "resnet34")
        servers = serve(kept / "store", tmp / "logs", args.serve)
        storms, batches, capacity_row, rate = [], {}, (float("nan"), float("nan"), Load()), float("nan")
        try:
            if args.only != "predict-batch":
                capacity_row = capacity(servers, tiles, capacity_s)
                print(f"overload: capacity {capacity_row[0]:.1f} images/s (load {capacity_row[2]})", flush=True)
                rate = OVERLOAD * capacity_row[0] / INSTANCES
                for number, protocol in enumerate(("grpc", "rest")):
                    settle(servers, tiles)
                    storms.append(storm(servers, protocol, tiles, rate, storm_s, seed=number))
                    print(f"overload: {protocol} storm: goodput {storms[-1].goodput:.1f} images/s, "
                          f"recovery {storms[-1].recovery_s:.1f} s", flush=True)  # fmt: skip
                settle(servers, tiles)
            if args.only != "storms":
                batches["resnet34"] = predict_batch_rows(servers, tiles, tiles_resnet, tmp, "resnet34", passes)
        finally:
            servers.stop()
        if args.only != "storms":
            archive(kept / "store-free", lambda: make_near_free_learner(kept / "near-free"), "near-free")
            servers = serve(kept / "store-free", tmp / "logs-free", args.serve)
            try:
                batches["near-free"] = predict_batch_rows(servers, tiles, tiles_free, tmp, "near-free", passes)
            finally:
                servers.stop()
    print_table(capacity_row, storms, batches, machine_description(), rate)


if __name__ == "__main__":
    sys.exit(main())
