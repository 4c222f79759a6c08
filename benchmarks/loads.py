"""The benchmarks' loads: a row of the table, concurrent clients over REST, gRPC and v2 REST, and their meters.

bench.py and pipeline.py time their served rows with these: CLIENTS threads, each sending its own
request of INSTANCES tiles again and again (the first request a warm-up), the seconds from the
first send to the last answer, and each request's latency.
"""

from __future__ import annotations

import base64
import json
import statistics
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import psutil
import requests

from fastai_serving.engine.learner import FP32
from fastai_serving_protos import tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto


@dataclass
class Row:
    name: str
    images: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    note: str = ""
    precision: str = FP32  # what it ran in: a served row's, as its worker reports it
    compiled: bool = False

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_body(tiles: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(t).decode()}} for t in tiles]}).encode()


def run_load(
    url: str, tiles: list[bytes], clients: int, instances: int, requests_per_client: int, headers=None, verify=None
) -> tuple:
    """CLIENTS threads each POST their requests; returns (seconds, latencies in ms, images answered).
    `verify`: the CA file of an https:// server."""
    bodies = [request_body([tiles[(i * instances + k) % len(tiles)] for k in range(instances)]) for i in range(clients)]
    return run_bodies(url, bodies, requests_per_client, headers, verify=verify)


def v2_request(tiles: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A tritonclient.http-style inference request: a JSON header, then the tiles as one binary BYTES tensor."""
    raw = b"".join(struct.pack("<I", len(tile)) + tile for tile in tiles)
    header = json.dumps({
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(tiles)],
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def v2_answered(response: requests.Response) -> int:
    """The instances a v2 answer holds: its output's first dimension, from the JSON header."""
    length = int(response.headers.get("Inference-Header-Content-Length", len(response.content)))
    return json.loads(response.content[:length])["outputs"][0]["shape"][0]


def run_v2_load(shim: str, tiles: list[bytes], clients: int, instances: int, requests_per_client: int) -> tuple:
    """run_load's load through the v2 REST route, the tiles as binary tensor data."""
    requests_of = [
        v2_request([tiles[(i * instances + k) % len(tiles)] for k in range(instances)]) for i in range(clients)
    ]
    url = f"{shim}/v2/models/bench/infer"
    return run_bodies(url, [body for body, _ in requests_of], requests_per_client, requests_of[0][1], v2_answered)


def run_bodies(
    url: str, bodies: list[bytes], requests_per_client: int, headers=None, answered_in=None, verify=None
) -> tuple:
    """One client thread per body, each POSTing it again and again; (seconds, latencies in ms, instances answered).

    `answered_in`: how many instances an answer holds (default: its "predictions").
    """
    answered_in = answered_in or (lambda response: len(response.json()["predictions"]))
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> int:
        session = requests.Session()  # one connection per client, kept alive (a TLS handshake once)
        answered = 0
        for _ in range(requests_per_client):
            began = time.perf_counter()
            response = session.post(url, data=bodies[index], headers=headers or {}, timeout=600, verify=verify or True)
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            answered += answered_in(response)
            with lock:
                latencies.append(elapsed)
        return answered

    client(0)  # warm-up: first request loads lazy state everywhere
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        answered = sum(pool.map(client, range(len(bodies))))
    return time.perf_counter() - start, latencies, answered


def predict_request(tiles: list[bytes]) -> tensorflow_serving_pb2.PredictRequest:
    """TF Serving's PredictRequest for the default model: the tiles as a DT_STRING tensor of shape [n]."""
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(tiles))])
    images = TensorProto(dtype=DataType.DT_STRING, tensor_shape=shape, string_val=tiles)
    return tensorflow_serving_pb2.PredictRequest(model_spec={"name": "bench"}, inputs={"image_bytes": images})


def run_grpc_load(
    address: str, tiles: list[bytes], clients: int, instances: int, requests_per_client: int, ca=None, metadata=None
) -> tuple:
    """run_load's load through the gRPC front: each client thread its own channel, the same tiles per request;
    with `ca` (the server's CA file) over TLS, with `metadata` (an API key) on every call."""
    calls = [
        predict_request([tiles[(i * instances + k) % len(tiles)] for k in range(instances)]) for i in range(clients)
    ]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> int:
        opened = (
            grpc.secure_channel(address, grpc.ssl_channel_credentials(open(ca, "rb").read()))
            if ca
            else grpc.insecure_channel(address)
        )
        with opened as channel:
            stub = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel)
            answered = 0
            for _ in range(requests_per_client):
                began = time.perf_counter()
                response = stub.Predict(calls[index], timeout=600, metadata=metadata)
                elapsed = (time.perf_counter() - began) * 1000
                answered += response.outputs["probabilities"].tensor_shape.dim[0].size
                with lock:
                    latencies.append(elapsed)
        return answered

    client(0)  # warm-up
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(client, range(clients)))
    return time.perf_counter() - start, latencies, answered


class PeakRss:
    """Samples the summed RSS of some processes and their children until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    parent = psutil.Process(pid)
                    total += sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def timed(call, repeat: int = 3, best: bool = False) -> float:
    """Seconds one run of `call` takes, after a warm-up run: the median of `repeat` runs (`best`: the fastest)."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)


def predict_loop_row(name: str, learn, items: list, as_input, note: str) -> Row:
    """The naive baseline: `learn.predict(as_input(item))` one item at a time, each call's latency timed."""
    latencies = []
    with PeakRss([psutil.Process().pid]) as rss, learn.no_bar():
        start = time.perf_counter()
        for item in items:
            began = time.perf_counter()
            learn.predict(as_input(item))
            latencies.append((time.perf_counter() - began) * 1000)
        seconds = time.perf_counter() - start
    return Row(name, len(items), seconds, latencies, rss.peak_mb, note)
