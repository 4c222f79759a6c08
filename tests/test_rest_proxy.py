"""The REST front's proxy (scripts/nginx.conf, as scripts/serve renders it) never loses a request to a
connection the shim closes: the real nginx, in front of a stand-in for the shim's unix sockets.

nginx keeps no connection to the shim idle: each request has one of its own, closed after its answer.
The race that rule removes, made certain: nginx is paused (SIGSTOP) while the clients' requests arrive
and then the shim closes every connection it holds, so nginx, resumed, reads the requests before it
learns of the closes. Had it kept connections, each request would meet one that is gone, and a POST
that fails there is not sent again (nginx cannot know the shim did not read it): the client gets 503.

And nginx as scripts/serve starts it, on serve's own listening socket (inherited), with its two workers:
a worker that wakes for a connection another worker took must not wait in accept() with requests of
its own half done, so every request is answered, and none after another client's connection arrives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from fastai_serving_scripts import rest_proxy
from fastai_serving_scripts.serve import rest_listener
from fastai_serving_shim.settings import Settings
from harness.servers import free_port
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

CLIENTS = 4
ANSWER = b'{"answered": true}'


class ShimStandIn:
    """HTTP/1.1 on a unix socket, as the shim's gunicorn: answers every request 200 and keeps the connection
    open (whatever the request's Connection header says) until `close_every_connection`."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.connections: list[socket.socket] = []
        self.requests_read: list[bytes] = []  # each request's head: its request line and headers
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        pending = b""
        try:
            while data := connection.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    length = _content_length(head)
                    while len(pending) < length:
                        pending += connection.recv(65536)
                    pending = pending[length:]
                    self.requests_read.append(head)
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
                        + ANSWER
                    )
        except OSError:
            return

    def close_every_connection(self) -> None:
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # nginx closed it already
            connection.close()

    def stop(self) -> None:
        self.listener.close()
        self.close_every_connection()


@contextlib.contextmanager
def _nginx(
    tmp_path: Path, settings: Settings, port: int, listener: socket.socket | None = None
) -> Iterator[tuple[subprocess.Popen, ShimStandIn, ShimStandIn]]:
    """nginx rendered from `settings` on 127.0.0.1:`port`, in front of a stand-in on each of the shim's sockets;
    on `listener`, inherited as scripts/serve hands it down, when one is given (else nginx binds the port).
    Yields nginx's master and the stand-ins (predictions, GET/HEAD); stops them all after."""
    nginx = rest_proxy.find_nginx()
    assert nginx, "nginx is part of the install (make install)"
    listen = rest_proxy.listen_address("127.0.0.1", port)
    config, app_socket, health_socket = rest_proxy.write_config(settings, listen, tmp_path / "run")
    app, health = ShimStandIn(app_socket), ShimStandIn(health_socket)
    command = rest_proxy.nginx_command(nginx, config, tmp_path / "run")
    inherited = {} if listener is None else {"env": {**os.environ, **rest_proxy.inherited(listener.fileno())}}
    fds = () if listener is None else (listener.fileno(),)
    with (tmp_path / "nginx.log").open("w") as log:  # its error lines (the EPIPE of a stale connection), for a failure
        started = subprocess.Popen(command, pass_fds=fds, stderr=log, **inherited)
        try:
            yield started, app, health
        finally:
            _stop(started)
            app.stop()
            health.stop()


def _stop(started: subprocess.Popen) -> None:
    """nginx's graceful stop; a worker that does not stop (one asleep in accept(), say) is killed with it."""
    workers = psutil.Process(started.pid).children()
    for worker in workers:
        worker.resume()
    started.send_signal(signal.SIGQUIT)
    try:
        started.wait(timeout=60)
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()  # psutil checks it is still that worker (no pid reuse) before it signals
        if started.poll() is None:
            started.kill()
            started.wait()


@pytest.fixture
def proxy(tmp_path) -> Iterator[tuple[int, tuple[ShimStandIn, ShimStandIn], list[psutil.Process]]]:
    """nginx rendered from the default settings (one worker, so one event loop sees every request) in front of a
    stand-in on each of the shim's sockets; yields its port, the stand-ins (predictions, GET/HEAD), its workers."""
    port = free_port()
    with _nginx(tmp_path, dataclasses.replace(Settings(), proxy_workers=1), port) as (started, app, health):
        wait_for(lambda: _answers(port), "nginx to listen")
        yield port, (app, health), psutil.Process(started.pid).children()


@pytest.fixture
def front_on_serves_listener(tmp_path) -> Iterator[tuple[int, socket.socket, ShimStandIn, list[psutil.Process]]]:
    """nginx as scripts/serve starts it: the default settings (two workers) on the listening socket serve
    binds and hands down; yields its port, that socket, the predictions' stand-in and nginx's workers."""
    port = free_port()
    with (
        rest_listener(argparse.Namespace(shim_host="127.0.0.1", port=port)) as listener,
        _nginx(tmp_path, Settings(), port, listener) as (started, app, _),
    ):
        # The socket listens before nginx starts (serve bound it): wait for nginx's workers instead.
        wanted = Settings().proxy_workers
        wait_for(lambda: len(psutil.Process(started.pid).children()) == wanted, f"nginx's {wanted} workers")
        yield port, listener, app, psutil.Process(started.pid).children()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _request(method: str) -> bytes:
    if method == "POST":
        body = b'{"instances": [1]}'
        head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: front\r\nContent-Type: application/json\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return b"GET /ready HTTP/1.1\r\nHost: front\r\n\r\n"


def _content_length(head: bytes) -> int:
    """An HTTP message head's Content-Length (0 without one)."""
    lines = head.lower().split(b"\r\n")
    return next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)


def _status_and_body(client: socket.socket) -> tuple[str, bytes]:
    """One answer read whole: its status line and its body (Content-Length's worth)."""
    client.settimeout(60)
    answer = b""
    while b"\r\n\r\n" not in answer and (data := client.recv(65536)):
        answer += data
    head, body = answer.split(b"\r\n\r\n", 1) if b"\r\n\r\n" in answer else (answer, b"")
    while len(body) < _content_length(head) and (data := client.recv(65536)):
        body += data
    return head.split(b"\r\n")[0].decode(), body


def _requests_while_the_shim_closes_its_connections(port, stand_ins, workers, method: str) -> list[tuple[str, bytes]]:
    """CLIENTS kept-alive clients each answered once; then, with nginx paused, each sends `method` again and the
    shim closes every connection it has; nginx resumed, each client's second answer."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        first = list(pool.map(lambda client: (client.sendall(_request(method)), _status_and_body(client))[1], clients))
    assert [status for status, _ in first] == ["HTTP/1.1 200 OK"] * CLIENTS
    for worker in workers:
        worker.suspend()
    for client in clients:
        client.sendall(_request(method))  # in nginx's receive queues: its next events, before the closes below
    for stand_in in stand_ins:
        stand_in.close_every_connection()
    for worker in workers:
        worker.resume()
    try:
        return [_status_and_body(client) for client in clients]
    finally:
        for client in clients:
            client.close()


def test_a_prediction_is_answered_when_the_shim_closes_its_connections_as_it_arrives(proxy):
    port, (app, health), workers = proxy
    answers = _requests_while_the_shim_closes_its_connections(port, (app, health), workers, "POST")
    assert answers == [("HTTP/1.1 200 OK", ANSWER)] * CLIENTS
    assert len(app.requests_read) == 2 * CLIENTS  # each prediction reached the shim once: none lost, none repeated
    assert len(app.connections) == 2 * CLIENTS  # each on a connection of its own, closed after its answer
    assert all(b"\r\nconnection: close" in head.lower() for head in app.requests_read)


def test_a_status_request_is_answered_when_the_shim_closes_its_connections_as_it_arrives(proxy):
    port, (app, health), workers = proxy
    answers = _requests_while_the_shim_closes_its_connections(port, (app, health), workers, "GET")
    assert answers == [("HTTP/1.1 200 OK", ANSWER)] * CLIENTS
    assert len(health.requests_read) == len(health.connections) == 2 * CLIENTS


def _non_blocking(pid: int, fd: int) -> bool:
    """Whether process `pid`'s file descriptor `fd` has O_NONBLOCK (its /proc fdinfo flags, in octal)."""
    flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_NONBLOCK)


def _predict_once(port: int) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(_request("POST"))
        return _status_and_body(client)


ROUNDS = 100  # on a blocking socket (before serve made it non-blocking) this loop hung: a prediction never answered


def test_on_serves_listener_no_worker_waits_in_accept_and_every_prediction_is_answered(front_on_serves_listener):
    port, listener, app, workers = front_on_serves_listener
    assert len(workers) > 1  # the default: the case where a worker wakes for a connection another one takes
    # Every worker sees serve's socket as non-blocking: one that wakes for a connection another worker
    # took gets EAGAIN and goes back to its other connections (blocking, it would sleep in accept()).
    assert all(_non_blocking(worker.pid, listener.fileno()) for worker in workers)
    for _ in range(ROUNDS):  # CLIENTS at once, each on a connection of its own; then no more until all are answered
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda _: _predict_once(port), range(CLIENTS)))
        assert answers == [("HTTP/1.1 200 OK", ANSWER)] * CLIENTS
    assert len(app.requests_read) == ROUNDS * CLIENTS
