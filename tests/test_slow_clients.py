"""Slow and idle clients never starve a front: the real server, with few threads and short deadlines set through settings.

The shim has 2 threads and the gRPC front 2; the clients held open are many times that. Every
wait is on the event itself (an answer, a closed socket) under a generous overall timeout.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastai_serving_protos import tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_scripts import rest_proxy
from fastai_serving_shim.settings import Settings, env_name
from harness.servers import Servers

pytestmark = pytest.mark.e2e

HELD = 20  # slow clients of each kind: ten times the threads
IDLE = 40
CAP = 30  # requests (REST) and calls (gRPC) in flight
SETTINGS = {
    "workers": "1",
    "threads": "2",
    "health_threads": "2",
    "grpc_threads": "2",
    "header_timeout_s": "8",
    "body_timeout_s": "6",  # twelve times the trickle's half second between bytes
    "max_requests": str(CAP),
    "grpc_receive_timeout_s": "8",
    "grpc_max_concurrent_rpcs": str(CAP),
}
PREDICT = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def servers(tmp_path_factory, digits_only_store) -> Iterator[Servers]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SETTINGS.items():
            patch.setenv(env_name(name), value)
        running = Servers(model_store=digits_only_store, log_dir=tmp_path_factory.mktemp("slow-clients") / "logs")
        running.start(["digits"])
    yield running
    running.stop(wait=False)


@pytest.fixture(scope="module")
def digit(demo_model) -> bytes:
    return sorted((demo_model / "images").rglob("*.png"))[0].read_bytes()


def rest_predictions(servers: Servers, digit: bytes, clients: int = 4, each: int = 3) -> list[int]:
    body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(digit).decode()}}]})

    def client(_: int) -> list[int]:
        with requests.Session() as session:
            return [
                session.post(f"{servers.shim}/v1/models/digits:predict", data=body, timeout=60).status_code
                for _ in range(each)
            ]

    with ThreadPoolExecutor(clients) as pool:
        return [status for statuses in pool.map(client, range(clients)) for status in statuses]


def grpc_request(digit: bytes) -> tensorflow_serving_pb2.PredictRequest:
    images = TensorProto(
        dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]), string_val=[digit]
    )
    return tensorflow_serving_pb2.PredictRequest(model_spec={"name": "digits"}, inputs={"image_bytes": images})


class Trickle:
    """Raw connections that each send a first part at once, then the rest a byte every half second until `stop`."""

    def __init__(self, port: int, payloads: list[tuple[bytes, bytes]]) -> None:
        self.port = port
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in payloads]
        for sock, (at_once, _) in zip(self.sockets, payloads, strict=True):
            sock.sendall(at_once)
        self.pending = [trickled for _, trickled in payloads]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for index, sock in enumerate(self.sockets):
                if self.pending[index]:
                    try:
                        sock.sendall(self.pending[index][:1])
                    except OSError:
                        pass  # closed by the server: cut_off sees it
                    self.pending[index] = self.pending[index][1:]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cut_off(self, timeout_s: float = 120, at_least_s: float = 5) -> list[bool]:
        """For each connection, whether the server closed it within a generous overall timeout (what it sent is
        read past); each gets `at_least_s` of its own even past it, so a stall that delays the server's deadlines
        as long as this wait leaves it time to act on them."""
        deadline, closed = time.monotonic() + timeout_s, []
        for sock in self.sockets:
            sock.settimeout(max(at_least_s, deadline - time.monotonic()))
            try:
                while sock.recv(4096):
                    pass
                closed.append(True)
            except ConnectionResetError:
                closed.append(True)
            except TimeoutError:
                closed.append(False)
        return closed

    def all_open(self) -> bool:
        """Whether the server still holds every connection open (none has been closed on this side's reads)."""
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return not any(closed_by_peer(sock) for sock in readable)

    def server_sides(self) -> list[str]:
        """For a failure's message: which process holds each connection's server end (none: still in the accept queue)."""
        ends = {
            (c.raddr.ip, c.raddr.port): c
            for c in psutil.net_connections(kind="tcp")
            if c.raddr and c.laddr.port == self.port
        }
        sides = []
        for sock in self.sockets:
            end = ends.get(sock.getsockname()[:2])
            owner = "gone" if end is None else "not accepted" if end.pid is None else process_name(end.pid)
            sides.append(f"{sock.getsockname()[1]}: {owner} {end.status if end else ''}")
        return sides

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def process_name(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).name()} (pid {pid})"
    except psutil.Error:
        return f"pid {pid}, gone"


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether a readable socket's peer has closed it (its end of stream, or a reset)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except ConnectionResetError:
        return True


def slow_bodies(count: int) -> list[tuple[bytes, bytes]]:
    """Requests whose headers come at once, and their body a byte at a time."""
    head = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    return [(head, b"{" + b" " * 99_999) for _ in range(count)]


def slow_headers(count: int) -> list[tuple[bytes, bytes]]:
    """Requests whose headers come a byte at a time."""
    head = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
    return [(b"", head) for _ in range(count)]


def idle_keep_alive(port: int, count: int) -> list[socket.socket]:
    """Connections that got one answer to GET / and stay open, idle."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'"alive"' not in answer:
            answer += sock.recv(4096)
        held.append(sock)
    return held


def test_slow_and_idle_rest_clients_past_the_thread_count_leave_predictions_and_ready_answered(servers, digit):
    idle = idle_keep_alive(servers.shim_port, IDLE)
    slow = Trickle(servers.shim_port, slow_bodies(HELD) + slow_headers(HELD))
    try:
        statuses = rest_predictions(servers, digit)
        ready = requests.get(f"{servers.shim}/ready", timeout=5)
        alive = requests.get(f"{servers.shim}/", timeout=5)
        slow.stop()  # the slow bodies stall now: their body deadline runs; the headers' deadline already runs
        cut = slow.cut_off()
        sides = [] if all(cut) else slow.server_sides()
    finally:
        slow.close()
        for sock in idle:
            sock.close()
    assert statuses == [200] * 12
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert alive.json() == {"status": "alive"}
    assert cut == [True] * (2 * HELD), f"{sides}\n{servers.log_tail()}"


def test_rest_requests_past_the_cap_are_refused_at_once_with_an_error_saying_so(servers, digit):
    slow = Trickle(servers.shim_port, slow_bodies(CAP))  # headers read: each is a request in flight
    try:
        deadline = time.monotonic() + 60
        while (
            answer := requests.post(f"{servers.shim}/v1/models/digits:predict", data=b"{}", timeout=30)
        ).status_code != 503:
            assert time.monotonic() < deadline, (
                f"never refused: {answer.status_code} {answer.text}\n{slow.server_sides()}\n{servers.log_tail()}"
            )
            if not slow.all_open():  # a stalled machine outlasted their body deadline: hold CAP requests again
                slow.stop()
                slow.close()
                slow = Trickle(servers.shim_port, slow_bodies(CAP))
            time.sleep(0.2)
    finally:
        slow.stop()
        slow.close()
    assert "too many requests in flight" in answer.json()["error"]
    assert answer.headers["Retry-After"] == "1"


class SlowCalls:
    """gRPC Predict calls whose request message never comes: the stream's headers, then nothing."""

    def __init__(self, address: str, count: int) -> None:
        self.channel = grpc.insecure_channel(address)
        self.release = threading.Event()
        call = self.channel.stream_unary(PREDICT)
        self.futures = [call.future(self._never(), timeout=120) for _ in range(count)]

    def _never(self) -> Iterator[bytes]:
        self.release.wait(120)
        return
        yield b""

    def outcomes(self) -> list[tuple[grpc.StatusCode, str]]:
        outcomes = []
        for future in self.futures:
            error = future.exception(timeout=120)
            outcomes.append((error.code(), error.details()) if error else (grpc.StatusCode.OK, ""))
        return outcomes

    def close(self) -> None:
        self.release.set()
        for future in self.futures:
            future.cancel()
        self.channel.close()


def test_slow_and_idle_grpc_clients_past_the_thread_count_leave_predictions_and_health_answered(servers, digit):
    idle = [grpc.insecure_channel(servers.grpc, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(IDLE)]
    for channel in idle:
        grpc.channel_ready_future(channel).result(timeout=60)
    slow = SlowCalls(servers.grpc, HELD)
    try:

        def client(_: int) -> int:
            with grpc.insecure_channel(servers.grpc) as channel:
                stub = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel)
                return sum(len(stub.Predict(grpc_request(digit), timeout=60).outputs) > 0 for _ in range(3))

        with ThreadPoolExecutor(4) as pool:
            answered = sum(pool.map(client, range(4)))
        with grpc.insecure_channel(servers.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        outcomes = slow.outcomes()
    finally:
        slow.close()
        for channel in idle:
            channel.close()
    assert answered == 12
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert {code for code, _ in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert all("did not arrive within 8 s" in details for _, details in outcomes)


def test_grpc_calls_past_the_cap_are_refused_at_once_with_resource_exhausted(servers, digit):
    slow = SlowCalls(servers.grpc, CAP)
    try:
        with grpc.insecure_channel(servers.grpc) as channel:
            stub = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    stub.Predict(grpc_request(digit), timeout=30)
                except grpc.RpcError as error:
                    refused = error
                    break
                assert time.monotonic() < deadline, "never refused"
    finally:
        slow.close()
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_rendered_nginx_config_is_valid_for_nginx(tmp_path):
    config, _, _ = rest_proxy.write_config(Settings(), "127.0.0.1:8501", tmp_path)
    assert "{{" not in config.read_text()
    check = subprocess.run(
        [*rest_proxy.nginx_command(rest_proxy.find_nginx(), config, tmp_path), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
