"""Probe: do slow and idle clients starve the fronts? Ordinary clients alone, then beside slow and idle connections.

Starts a real `scripts/serve` on free loopback ports and measures ordinary clients' p50 and
throughput through REST and gRPC, first alone, then with, open at once:
  REST  --slow connections, half sending a request's headers and then one body byte every
        --trickle-s seconds, half sending their headers one byte at a time at the same pace;
        --idle keep-alive connections, each after one answered GET /
  gRPC  --slow HTTP/2 streams (headers, then one byte of the message every --trickle-s seconds),
        --streams-per-connection on each connection; --idle HTTP/2 connections that never call.
During the attacked phase GET /ready, / and /metrics are timed every half second. The slow and
idle clients count how many the server cut off, and after how long. Loopback only; every phase is
bounded by --phase-s and every request by --timeout-s, so the probe stops by itself.

`make slow-clients` (MODELS="free resnet" adds the benchmark's resnet34; FRONTS="direct proxy" compares the
REST fronts in one run: gunicorn alone, as before nginx, and nginx in front).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import statistics
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import requests

from fastai_serving_protos import tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.servers import Servers, make_archive
from harness.workload import make_learner, make_near_free_learner, make_tiles

MODEL = "bench"
FRONTS = {"proxy": [], "direct": ["--no-proxy"]}  # scripts/serve's flags for each REST front
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
HEALTH_PATHS = ("/ready", "/", "/metrics")


# --- The model ------------------------------------------------------------------------------------


# --- Ordinary clients -----------------------------------------------------------------------------


@dataclass
class Load:
    """What ordinary clients got in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    instances: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def sent(self) -> int:
        return self.answered + sum(self.failures.values())

    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    def per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


def rest_body(tiles: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(t).decode()}} for t in tiles]}).encode()


def grpc_request(tiles: list[bytes]) -> tensorflow_serving_pb2.PredictRequest:
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(tiles))])
    images = TensorProto(dtype=DataType.DT_STRING, tensor_shape=shape, string_val=tiles)
    return tensorflow_serving_pb2.PredictRequest(model_spec={"name": MODEL}, inputs={"image_bytes": images})


def ordinary_load(
    protocol: str, address: str, tiles: list[bytes], clients: int, instances: int, seconds: float, timeout_s: float
) -> Load:
    """`clients` threads send requests of `instances` tiles for `seconds`; each request gets `timeout_s`."""
    load, lock = Load(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        chosen = [tiles[(index * instances + k) % len(tiles)] for k in range(instances)]
        if protocol == "rest":
            session, body = requests.Session(), rest_body(chosen)
            url = f"{address}/v1/models/{MODEL}:predict"
        else:
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            stub, call = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel), grpc_request(chosen)
        while time.monotonic() < deadline:
            began = time.perf_counter()
            why = ""
            try:
                if protocol == "rest":
                    response = session.post(url, data=body, timeout=timeout_s)
                    why = "" if response.status_code == 200 else f"HTTP {response.status_code}"
                else:
                    stub.Predict(call, timeout=timeout_s)
            except requests.Timeout:
                why = "timed out"
            except requests.RequestException as error:
                why = type(error).__name__
            except grpc.RpcError as error:
                why = error.code().name
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                if why:
                    load.fail(why)
                else:
                    load.latencies_ms.append(elapsed)
                    load.instances += instances
        if protocol == "grpc":
            channel.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    load.seconds = time.perf_counter() - start
    return load


class HealthTimer:
    """Times GET /ready, / and /metrics every half second until stopped: a fresh connection each time."""

    def __init__(self, shim: str, timeout_s: float) -> None:
        self.shim, self.timeout_s = shim, timeout_s
        self.latencies_ms: dict[str, list[float]] = {path: [] for path in HEALTH_PATHS}
        self.failures: dict[str, int] = {path: 0 for path in HEALTH_PATHS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for path in HEALTH_PATHS:
                began = time.perf_counter()
                try:
                    status = requests.get(self.shim + path, timeout=self.timeout_s).status_code
                except requests.RequestException:
                    status = 0
                if status in (200, 503):  # 503: not ready is an answer too
                    self.latencies_ms[path].append((time.perf_counter() - began) * 1000)
                else:
                    self.failures[path] += 1

    def __enter__(self) -> HealthTimer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        parts = []
        for path in HEALTH_PATHS:
            times = self.latencies_ms[path]
            worst = f"max {max(times):.0f} ms, p50 {statistics.median(times):.0f} ms" if times else "never answered"
            parts.append(f"{path} {worst}, {len(times)} answered, {self.failures[path]} failed")
        return "; ".join(parts)


# --- Slow and idle clients ------------------------------------------------------------------------


@dataclass
class Held:
    """One kind of held-open connection: how many opened, how many the server cut, after how long."""

    kind: str
    opened: int = 0
    refused: int = 0
    cut_after_s: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  # what the server said before it cut (status line)

    def summary(self) -> str:
        cut = len(self.cut_after_s)
        when = f", median after {statistics.median(self.cut_after_s):.1f} s" if cut else ""
        said = f", answered {self.answers}" if self.answers else ""
        return f"{self.kind}: {self.opened} opened, {self.refused} refused, {cut} cut off{when}{said}"


async def _hold_rest(host: str, port: int, kind: str, held: Held, trickle_s: float, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        held.refused += 1
        return
    held.opened += 1
    began = time.monotonic()
    head = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    try:
        if kind == "idle":
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await _read_response(reader)
            began = time.monotonic()  # idle from here on
            pending = b""
        elif kind == "slow body":
            writer.write(f"{head}Content-Length: 100000\r\n\r\n".encode())
            pending = b"{" + b" " * 99_999
        else:  # slow headers
            pending = (head + "X-Slow: " + "a" * 10_000 + "\r\n\r\n").encode()
        while not stop.is_set():
            if pending:
                writer.write(pending[:1])
                pending = pending[1:]
                await writer.drain()
            answer = await _wait_read(reader, stop, trickle_s if pending else None)
            if answer is None:
                continue  # nothing from the server yet: the next byte
            if answer:
                status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
                held.answers[status] = held.answers.get(status, 0) + 1
            held.cut_after_s.append(time.monotonic() - began)
            return
    except (ConnectionError, OSError):
        held.cut_after_s.append(time.monotonic() - began)
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    await reader.readexactly(length)


async def _wait_read(reader: asyncio.StreamReader, stop: asyncio.Event, timeout_s: float | None) -> bytes | None:
    """Bytes the server sent (b"" when it closed), or None when `timeout_s` passed (or the probe stops) first."""
    read = asyncio.ensure_future(reader.read(65536))
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({read, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if read in done:
        return read.result()
    read.cancel()
    return None


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman (both under 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


DATA, HEADERS, SETTINGS, PING, GOAWAY, END_STREAM, END_HEADERS, ACK = 0, 1, 4, 6, 7, 0x1, 0x4, 0x1


async def _hold_h2(host: str, port: int, streams: int, held: Held, trickle_s: float, stop: asyncio.Event) -> None:
    """One HTTP/2 connection: `streams` Predict calls that send their message a byte at a time (0: idle)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        held.refused += 1
        return
    held.opened += max(streams, 1)
    began = time.monotonic()
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
    headers = b"".join(
        _literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PREDICT_METHOD),
            (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    ids = [1 + 2 * i for i in range(streams)]
    for stream in ids:
        # A gRPC message of 1,000 bytes announced; its bytes follow one at a time.
        writer.write(
            _frame(HEADERS, END_HEADERS, stream, headers) + _frame(DATA, 0, stream, b"\x00" + struct.pack(">I", 1000))
        )
    buffer, cut = b"", False
    try:
        while not stop.is_set() and not cut and (ids or not streams):
            for stream in ids:
                writer.write(_frame(DATA, 0, stream, b"\x00"))
            await writer.drain()
            ending = time.monotonic() + trickle_s
            while not stop.is_set() and time.monotonic() < ending:
                chunk = await _wait_read(reader, stop, max(0.0, ending - time.monotonic()))
                if chunk is None:
                    break
                if not chunk:
                    cut = True
                    break
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    frame_head, kind, flags, payload = buffer[:9], buffer[3], buffer[4], buffer[9 : 9 + length]
                    buffer = buffer[9 + length :]
                    if kind == SETTINGS and not flags & ACK:
                        writer.write(_frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        writer.write(_frame(PING, ACK, 0, payload))
                    elif kind == GOAWAY:
                        held.answers["GOAWAY"] = held.answers.get("GOAWAY", 0) + 1
                    elif kind == HEADERS and flags & END_STREAM:  # the server ended the call (its status)
                        stream = int.from_bytes(frame_head[5:9], "big") & 0x7FFFFFFF
                        if stream in ids:
                            ids.remove(stream)
                            held.cut_after_s.append(time.monotonic() - began)
                            held.answers["call ended by the server"] = (
                                held.answers.get("call ended by the server", 0) + 1
                            )
    except (ConnectionError, OSError):
        cut = True
    finally:
        writer.close()
    if cut:
        held.cut_after_s += [time.monotonic() - began] * (len(ids) if streams else 1)


class Attack:
    """Slow and idle connections to both fronts, held open on an event loop in a thread until `stop`."""

    def __init__(self, host: str, rest_port: int, grpc_port: int, slow: int, idle: int, trickle_s: float,
                 streams_per_connection: int) -> None:  # fmt: skip
        self.host, self.rest_port, self.grpc_port = host, rest_port, grpc_port
        self.slow, self.idle, self.trickle_s, self.per_connection = slow, idle, trickle_s, streams_per_connection
        self.held = {
            kind: Held(kind)
            for kind in ("REST slow body", "REST slow headers", "REST idle", "gRPC slow streams", "gRPC idle")
        }
        self.loop = asyncio.new_event_loop()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        held, tasks = self.held, []

        def spawn(coroutines: list) -> list:
            return [asyncio.ensure_future(c) for c in coroutines]

        rest = [("slow body", held["REST slow body"])] * (self.slow // 2)
        rest += [("slow headers", held["REST slow headers"])] * (self.slow - self.slow // 2)
        rest += [("idle", held["REST idle"])] * self.idle
        grpc_streams = [self.per_connection] * (self.slow // self.per_connection) + [0] * self.idle
        openers = [_hold_rest(self.host, self.rest_port, kind, h, self.trickle_s, self._stop) for kind, h in rest]
        openers += [
            _hold_h2(self.host, self.grpc_port, n, held["gRPC slow streams" if n else "gRPC idle"], self.trickle_s,
                     self._stop)
            for n in grpc_streams
        ]  # fmt: skip
        for start in range(0, len(openers), 100):  # a hundred at a time: the listeners' backlogs are finite
            tasks += spawn(openers[start : start + 100])
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        self._opened.set()
        await self._stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Attack:
        self._thread.start()
        self._opened.wait(timeout=120)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def still_open(self) -> dict[str, int]:
        return {kind: h.opened - len(h.cut_after_s) for kind, h in self.held.items()}


# --- The probe ------------------------------------------------------------------------------------


def raise_open_file_limit(wanted: int) -> int:
    """The soft limit on open files raised towards `wanted` (at most the hard limit): each connection is a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def print_phase(name: str, loads: dict[str, Load]) -> None:
    for protocol, load in loads.items():
        failed = f", unanswered {load.failures}" if load.failures else ""
        print(
            f"| {name:<24} | {protocol:<4} | {load.sent:>5} | {load.answered:>8} | {load.p50():8.0f} "
            f"| {load.per_s():10.1f} |{failed}"
        )


def probe(servers: Servers, tiles: list[bytes], args: argparse.Namespace, label: str) -> dict[str, dict[str, Load]]:
    def loads() -> dict[str, Load]:
        return {
            "rest": ordinary_load("rest", servers.shim, tiles, args.clients, args.instances, args.phase_s, args.timeout_s),
            "grpc": ordinary_load("grpc", servers.grpc, tiles, args.clients, args.instances, args.phase_s, args.timeout_s),
        }  # fmt: skip

    ordinary_load("rest", servers.shim, tiles, 1, args.instances, 1, args.timeout_s)  # warm-up
    phases = {"alone": loads()}
    attack = Attack("127.0.0.1", servers.shim_port, servers.grpc_port, args.slow, args.idle, args.trickle_s,
                    args.streams_per_connection)  # fmt: skip
    with attack, HealthTimer(servers.shim, timeout_s=5) as health:
        opened = {kind: h.opened for kind, h in attack.held.items()}
        phases["beside slow and idle"] = loads()
        still = attack.still_open()
    print(f"\n{label}: {args.clients} clients x {args.instances} tiles, {args.phase_s:g} s a phase, "
          f"requests time out after {args.timeout_s:g} s")  # fmt: skip
    print(f"held open: {opened}; still open at the phase's end: {still}")
    print("| phase                    | to   | sent  | answered | p50 ms   | instances/s |")
    print("|---|---|---|---|---|---|")
    for name, phase in phases.items():
        print_phase(name, phase)
    for protocol in ("rest", "grpc"):
        alone, attacked = phases["alone"][protocol], phases["beside slow and idle"][protocol]
        print(f"  {protocol}: p50 beside ÷ alone {attacked.p50() / alone.p50():.2f}, "
              f"throughput beside ÷ alone {attacked.per_s() / alone.per_s() if alone.per_s() else 0:.2f}")  # fmt: skip
    print(f"  health during the attack: {health.summary()}")
    for held in attack.held.values():
        print(f"  {held.summary()}")
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", choices=["free", "resnet"], nargs="+", default=["free"],
        help="near-free (pooling + linear) and/or the benchmark's resnet34")  # fmt: skip
    add("--slow", type=int, default=500, help="slow connections (REST) and slow streams (gRPC)")
    add("--idle", type=int, default=1000, help="idle keep-alive connections (REST) and idle HTTP/2 connections (gRPC)")
    add("--trickle-s", type=float, default=5.0, help="seconds between the slow clients' bytes")
    add("--streams-per-connection", type=int, default=10, help="slow gRPC streams per HTTP/2 connection")
    add("--clients", type=int, default=4, help="ordinary clients")
    add("--instances", type=int, default=8, help="tiles per ordinary request")
    add("--phase-s", type=float, default=20.0, help="seconds of ordinary load per phase")
    add("--timeout-s", type=float, default=15.0, help="an ordinary request's timeout")
    add("--fronts", choices=sorted(FRONTS), nargs="+", default=["proxy"],
        help="the REST fronts to compare in one run: nginx in front of the shim (proxy), gunicorn alone (direct)")  # fmt: skip
    add("--serve-flag", action="append", default=[], help="a flag for scripts/serve (repeatable)")
    args = parser.parse_args(argv)
    limit = raise_open_file_limit(4 * (args.slow + args.idle) + 1024)
    print(f"open-file soft limit {limit}", flush=True)
    tiles = make_tiles(32)
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        tmp = Path(tmp)
        for model in args.model:
            export = make_near_free_learner(tmp / "free") if model == "free" else make_learner(tmp / "resnet")
            store = tmp / f"store-{model}"
            made = make_archive(MODEL, export, store)
            if made.returncode != 0:
                sys.exit(f"slow-clients: make-archive failed:\n{made.stderr}")
            for front in args.fronts:
                flags = [*FRONTS[front], *args.serve_flag]
                servers = Servers(model_store=store, log_dir=tmp / f"logs-{model}-{front}", flags=flags)
                servers.start([MODEL])
                try:
                    probe(servers, tiles, args, f"model {model}, REST front {front}")
                finally:
                    servers.stop()


if __name__ == "__main__":
    main()
