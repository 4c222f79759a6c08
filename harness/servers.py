"""The real servers on free loopback ports, for end-to-end tests and benchmarks: scripts/serve and scripts/make-archive."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from fastai_serving.contract.errors import ServingError
from fastai_serving_shim.torchserve import Management
from harness.unprivileged import SETPRIV_PROGRAM, Unprivileged

PARENT_DEATH = ["--pdeathsig", "TERM"]  # setpriv's: SIGTERM to the command when its parent ends
BATCH_LINE = re.compile(r"fastai-serving batch: requests=(\d+) instances=(\d+) failed=(\d+)(?: expired=(\d+))?")

ROOT = Path(__file__).resolve().parent.parent
SHIM_COMMAND = [
    str(Path(sys.executable).parent / "gunicorn"),
    "-c",
    "python:fastai_serving_shim.rest.gunicorn_conf",
    "fastai_serving_shim.rest.wsgi:app",
]


def archive_arguments(name: str, learner: Path, store: Path, *flags: str) -> list[str]:
    """make-archive's command line for one Learner into a store."""
    return ["--name", name, "--learner", str(learner), "--store", str(store), *flags]


def make_archive(name: str, learner: Path, store: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run the real scripts/make-archive."""
    command = [str(ROOT / "scripts" / "make-archive"), *archive_arguments(name, learner, store, *flags)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def archive_here(name: str, learner: Path, store: Path, *flags: str) -> Path:
    """make-archive's own code in this process (fastai is imported once, not per archive): for fixtures.

    A refusal raises SystemExit with make-archive's message; tests of the command itself use `make_archive`.
    """
    from fastai_serving_scripts import make_archive as tool

    return tool.make_archive(tool.parse_args(archive_arguments(name, learner, store, *flags)))


def ending_with_the_tests(command: list[str]) -> list[str]:
    """`command` sent SIGTERM when the test run that started it ends, however it ends (a killed run would otherwise
    leave its servers, and their workers' memory, behind): setpriv sets the parent-death signal, then runs it.

    Not a preexec_fn: that forks this process, whose gRPC clients are busy, and grpc's fork handlers restart its
    poller in the child, whose descriptor subprocess then closes: the child aborts before it runs `command`
    (SIGABRT, "Epoll1Poller ... epoll_wait error: Bad file descriptor"; here 8 forks in 300 under gRPC load).
    An unprivileged command is already a setpriv: the same one sets the signal, after the change of user (the
    kernel clears the parent-death signal when a process's user changes).
    """
    runs = command[1:] if command[0] == SETPRIV_PROGRAM else command
    return [SETPRIV_PROGRAM, *PARENT_DEATH, *runs]


def free_port() -> int:
    """A loopback port free now and not handed out before by this process, drawn below the kernel's ephemeral range:
    a port the kernel hands out (bind to 0) may be taken again as the local end of an outgoing connection before the
    server binds it (CI: TorchServe's management port, "Failed to bind"); the kernel never picks one below that range
    for a client. Never twice: two draws before either is bound (a server's several ports, a test's "nothing there"
    beside the shim it starts) would otherwise meet, one time in some ten thousand (CI: a shim told its upstream was
    a free port was given that same port, and answered itself 404)."""
    first, end = _ports_of_this_process()
    for _ in range(1000):  # a run draws some thousands of a slice's ten thousand or more: a free one is soon found
        port = _PORTS.randrange(first, end)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {first} and {end}")


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: a socket bound there that never
    listens holds it, so no server can take it (a free port drawn and let go may be listened on by the next server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        yield sock.getsockname()[1]


PORTS_FROM = 10000  # the lowest port a test server is given
_PORTS = random.Random()  # its own generator: a test seeding random does not make two runs pick the same ports
_HANDED_OUT: set[int] = set()  # the ports free_port gave in this process


def _ports_of_this_process() -> tuple[int, int]:
    """The ports this process draws from (first, end): below the ephemeral range and, when the suite runs in
    parallel (pytest-xdist), a slice of it per worker, so that two workers never draw the same free port at once."""
    low, _high = _ephemeral_range()
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers <= 1:
        return PORTS_FROM, low
    width = (low - PORTS_FROM) // workers
    first = PORTS_FROM + int(worker.removeprefix("gw")) * width
    return first, first + width


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


@dataclass
class Servers:
    """A running `scripts/serve`: TorchServe, and the shim and its gRPC front unless `with_shim` is False.

    Each keeps TorchServe's pid file in a run folder of its own, so several run side by side.
    """

    model_store: Path
    log_dir: Path
    with_shim: bool = True
    with_grpc: bool = True
    default_model: str = ""
    flags: list[str] = field(default_factory=list)  # more scripts/serve flags
    drain_s: float = 0  # serve's --drain-s: a test server stops at once; the tests of the drain ask for one
    shim_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    inference_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    grpc_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    unprivileged: bool = False  # as the image runs: uid 10001, no capabilities (harness.unprivileged)
    environment: dict[str, str] = field(default_factory=dict)  # FASTAI_SERVING_* settings for serve (keys, TLS, load)
    ca: Path | None = None  # with TLS: the CA file that signed the fronts' certificate
    api_key: str = ""  # with keys: one the fronts accept (for the readiness check)
    process: subprocess.Popen | None = None

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def shim(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.shim_port}"

    @property
    def grpc(self) -> str:
        """The gRPC front's address, as gRPC clients take it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def run_dir(self) -> Path:
        return self.log_dir / "run"

    def start(self, models: list[str], timeout_s: float = 300) -> Servers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(ROOT / "scripts" / "serve"),
            "--model-store", str(self.model_store),
            "--log-dir", str(self.log_dir),
            "--inference-port", str(self.inference_port),
            "--management-port", str(self.management_port),
            "--metrics-port", str(self.metrics_port),
            "--grpc-ports", str(self.grpc_ports[0]), str(self.grpc_ports[1]),
            "--port", str(self.shim_port),
            "--grpc-port", str(self.grpc_port),
            "--shim-host", "127.0.0.1",
            "--run-dir", str(self.run_dir),
            "--drain-s", f"{self.drain_s:g}",
        ]  # fmt: skip
        if self.default_model:
            command += ["--default-model", self.default_model]
        if not self.with_shim:
            command.append("--no-shim")
        command += self.flags
        if not self.with_grpc:
            command.append("--no-grpc")
        environment = {**os.environ, **self.environment}
        if self.unprivileged:
            run = Unprivileged(self.log_dir / "unprivileged")
            command = run.command(command, self.log_dir, self.model_store)
            environment = {**run.environment(), **self.environment}
        with open(self.log_dir / "serve.out", "wb") as output:
            self.process = subprocess.Popen(
                ending_with_the_tests(command), stdout=output, stderr=subprocess.STDOUT, env=environment
            )
        try:
            self.wait_ready(models, timeout_s)
        except BaseException:
            self.stop()  # a server that never got ready is left to no fixture's teardown: stop it here
            raise
        return self

    def management_client(self) -> Management:
        """TorchServe's management API, through the project's one client of it."""
        return Management(self.management)

    def ready(self, model: str) -> bool:
        try:
            return self.management_client().ready(model)
        except ServingError:
            return False

    def shim_ready(self, model: str) -> bool:
        if not self.with_shim:
            return True
        try:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            answer = requests.get(
                f"{self.shim}/v1/models/{model}", timeout=2, headers=headers, verify=str(self.ca) if self.ca else True
            )
            if answer.status_code != 200:
                return False
            if self.with_grpc:
                socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2).close()  # the gRPC front listens
            return True
        except (requests.RequestException, OSError):
            return False

    def wait_ready(self, models: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scripts/serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if all(self.ready(model) for model in models) and self.shim_ready(models[0]):
                return
            time.sleep(1)
        raise TimeoutError(f"models {models} not ready after {timeout_s} s:\n{self.log_tail()}")

    def model_log(self) -> str:
        path = self.log_dir / "model_log.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def batch_lines(self) -> list[dict[str, int]]:
        """The handler's 'fastai-serving batch:' log lines, parsed: how TorchServe's batches were made up."""
        return [
            {"requests": int(r), "instances": int(i), "failed": int(f), **({"expired": int(e)} if e and int(e) else {})}
            for r, i, f, e in BATCH_LINE.findall(self.model_log())
        ]

    def batches_since(self, before: int, wanted: dict[str, int], timeout_s: float = 10) -> list[dict[str, int]]:
        """The batch lines logged after the first `before`, once `wanted` is among them (the log may trail the answers)."""
        deadline = time.monotonic() + timeout_s
        while wanted not in self.batch_lines()[before:] and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.batch_lines()[before:]

    def in_one_batch(self, send: Callable[[], Any], wanted: dict[str, int], rounds: int = 3) -> tuple[Any, list]:
        """`send()` (requests sent at once) again until one round's requests were answered in one batch as `wanted`,
        at most `rounds` times: that round's answers and the batch lines since it began.

        A REST front has several processes, and each asks TorchServe for a model's description on its first call
        for it (and once a minute after); TorchServe queues that call to the model's worker, where it can end the batch
        being gathered. So a round may be split through no fault of batching; the next finds the description cached."""
        for _ in range(rounds):
            before = len(self.batch_lines())
            answers = send()
            batches = self.batches_since(before, wanted)
            if wanted in batches:
                break
        return answers, batches

    def log_tail(self, lines: int = 60) -> str:
        text = ""
        for name in ("serve.out", "model_log.log"):
            path = self.log_dir / name
            if path.exists():
                text += f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self, wait: bool = True) -> int | None:
        """SIGTERM to serve, and its exit status once it ended; with `wait=False` None at once, for a fixture's
        teardown: serve's stop is mostly waiting (TorchServe's Java takes seconds to end after its workers), which
        the next tests need not share; `stopped_servers_ended` collects them when the run ends."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        if not wait:
            _STOPPING.append(self.process)
            return None
        return _ended(self.process)


_STOPPING: list[subprocess.Popen] = []  # servers told to stop by Servers.stop(wait=False), not yet waited for


def stopped_servers_ended() -> None:
    """Wait for every server told to stop without waiting (killed after a minute, as `Servers.stop` does)."""
    while _STOPPING:
        _ended(_STOPPING.pop())


def _ended(process: subprocess.Popen, timeout_s: float = 60) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def start_shim(log_dir: Path, **settings: str) -> tuple[subprocess.Popen, str]:
    """The real shim alone under gunicorn, with FASTAI_SERVING_* settings; returns (process, base URL)."""
    port = free_port()
    environment = {
        **os.environ,
        "FASTAI_SERVING_HOST": "127.0.0.1",
        "FASTAI_SERVING_PORT": str(port),
        **{f"FASTAI_SERVING_{name.upper()}": value for name, value in settings.items()},
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "shim.out", "wb") as output:
        process = subprocess.Popen(SHIM_COMMAND, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/openapi.yaml", timeout=1)
            return process, url
        except requests.RequestException:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"the shim did not start: {(log_dir / 'shim.out').read_text()}")
