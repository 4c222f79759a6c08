"""`serve` owns its processes and its ports: children end with it however it ends, a taken port is refused,
and clients that keep connecting through a SIGTERM get answers or refusals, never a reset connection."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import subprocess
import threading
from collections import Counter

import grpc
import psutil
import pytest

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.learners import synthetic_images
from harness.servers import ROOT, Servers, archive_here, free_port
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

ANSWERED, REFUSED, RESET = "answered", "refused", "reset"


@pytest.fixture()
def servers(tmp_path, exported_learners):
    store = tmp_path / "store"
    archive_here("digits", exported_learners["classifier"], store)  # a small Learner, served as "digits"
    running = Servers(model_store=store, log_dir=tmp_path / "logs", drain_s=1)
    yield running.start(["digits"])
    running.stop(wait=False)


def family_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], timeout_s: float = 120) -> list[psutil.Process]:
    """The processes still alive once every one has ended or the timeout has passed."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return alive


def test_serve_killed_with_sigkill_takes_torchserve_its_workers_and_both_fronts_with_it(servers):
    children = family_of(servers.process.pid)
    names = " ".join(" ".join(child.cmdline()) for child in children)
    assert (
        "torchserve" in names and "gunicorn" in names and "fastai_serving_shim.grpc.server" in names and "java" in names
    )
    servers.process.kill()
    servers.process.wait()
    assert wait_gone(children) == []
    for port in (servers.shim_port, servers.grpc_port, servers.inference_port, servers.management_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_serve_refuses_a_port_already_taken_naming_it_before_anything_starts(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        command = [str(ROOT / "scripts" / "serve"), "--model-store", str(store), "--log-dir", str(tmp_path / "logs"),
                   "--shim-host", "127.0.0.1", "--port", str(taken), "--grpc-port", str(free_port()),
                   "--inference-port", str(free_port()), "--management-port", str(free_port()),
                   "--metrics-port", str(free_port()), "--grpc-ports", str(free_port()), str(free_port())]  # fmt: skip
        finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert f"port {taken} (the REST front) is taken by pid" in finished.stderr
    assert "ready" not in finished.stdout and not (tmp_path / "logs" / "ts_log.log").exists()


def rest_attempt(port: int, body: bytes) -> str:
    """One prediction on a new connection, as a client that ignores readiness sends it: how it ended."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v1/models/digits:predict", body=body)
        response = connection.getresponse()
        response.read()
        return ANSWERED if response.status == 200 else f"status {response.status}"
    except ConnectionRefusedError:
        return REFUSED
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        return RESET
    finally:
        connection.close()


def grpc_attempt(address: str, image: bytes) -> str:
    """One Predict on a new channel: OK, or UNAVAILABLE saying why (never a call cut off halfway)."""
    request = serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"))
    request.inputs["image_bytes"].CopyFrom(
        TensorProto(dtype=DataType.DT_STRING, string_val=[image], tensor_shape=TensorShapeProto(dim=[{"size": 1}]))
    )
    with grpc.insecure_channel(address) as channel:
        try:
            serving_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
            return ANSWERED
        except grpc.RpcError as error:
            details = (error.details() or "").lower()
            if error.code() == grpc.StatusCode.UNAVAILABLE and "reset" not in details:
                return REFUSED
            return f"{error.code().name}: {details}"


def test_clients_that_keep_connecting_through_sigterm_get_answers_or_refusals_never_resets(servers, tmp_path):
    image = synthetic_images(tmp_path / "images", count=1)[0].read_bytes()
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    outcomes: dict[str, Counter] = {"rest": Counter(), "grpc": Counter()}
    stopped = threading.Event()

    def keep_connecting(front: str, attempt) -> None:
        while not stopped.is_set():
            outcomes[front][attempt()] += 1

    clients = [threading.Thread(target=keep_connecting, args=("rest", lambda: rest_attempt(servers.shim_port, body)))
               for _ in range(4)]  # fmt: skip
    clients.append(threading.Thread(target=keep_connecting, args=("grpc", lambda: grpc_attempt(servers.grpc, image))))
    for client in clients:
        client.start()
    # The load is flowing on both fronts (the clients' own counts) before the signal, however slow the machine.
    wait_for(lambda: outcomes["rest"][ANSWERED] >= 20 and outcomes["grpc"][ANSWERED] >= 5, "answers on both fronts")
    servers.process.send_signal(signal.SIGTERM)
    exit_code = servers.process.wait(timeout=180)
    stopped.set()
    for client in clients:
        client.join(timeout=120)
    assert exit_code == 0
    assert set(outcomes["rest"]) <= {ANSWERED, REFUSED}, outcomes
    assert set(outcomes["grpc"]) <= {ANSWERED, REFUSED}, outcomes
    assert outcomes["rest"][ANSWERED] >= 20 and outcomes["rest"][REFUSED] > 0
