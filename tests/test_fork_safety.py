"""Starting a child never aborts beside busy gRPC clients: serve loads no gRPC, and the tests' servers start
without a Python hook between fork and exec (grpc's fork handlers would run there and abort the child)."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness.servers import ending_with_the_tests
from harness.unprivileged import Unprivileged

PRINT_PARENT_DEATH_SIGNAL = (
    "import ctypes; signal = ctypes.c_int(); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0); print(signal.value)"  # PR_GET_PDEATHSIG
)
STARTS = 200  # with a preexec_fn, about 8 children in 300 aborted here under this load


def test_serve_loads_no_grpc_so_the_children_it_starts_run_no_grpc_fork_handlers():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, fastai_serving_scripts.serve; print(sorted(m for m in sys.modules if m.startswith('grpc')))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert loaded.stdout.strip() == "[]"


def test_a_server_command_starts_every_time_while_this_process_grpc_clients_are_busy():
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stopping = threading.Event()

    def keep_calling() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stopping.is_set():
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

    callers = [threading.Thread(target=keep_calling) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        exit_codes = [
            subprocess.run(ending_with_the_tests(["true"]), capture_output=True, timeout=60).returncode
            for _ in range(STARTS)
        ]
    finally:
        stopping.set()
        for caller in callers:
            caller.join()
        server.stop(None)
    assert exit_codes == [0] * STARTS


def test_a_server_command_ends_with_the_tests_as_root_and_as_the_image_runs(tmp_path):
    command = [sys.executable, "-c", PRINT_PARENT_DEATH_SIGNAL]
    unprivileged = Unprivileged(tmp_path / "unprivileged").command(command)
    for each in (command, unprivileged):
        told = subprocess.run(ending_with_the_tests(each), capture_output=True, text=True, check=True, timeout=120)
        assert told.stdout.strip() == "15"  # SIGTERM: the kernel sends it when the test run ends
