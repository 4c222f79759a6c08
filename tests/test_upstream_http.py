"""The inference hop's HTTP client (shim/upstream_http.py): whole answers, kept-alive connections, clear failures.

Each test runs a real server on a loopback port: Python's own HTTP/1.1 server, or a socket that
answers byte for byte as a test needs (a close while idle, chunks, a body cut short, silence).
tests/test_torchserve_edge.py and the end-to-end tests check the same client against TorchServe.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastai_serving_shim.upstream_http import ConnectionPool, UpstreamTimeout, UpstreamUnreachable


class Echo(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: answers each POST with its body, the connection's number and the headers it got."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.connections.add(self.client_address)
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Connection", str(self.client_address[1]))
        self.send_header("X-Got-Header", self.headers.get("X-Hop", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.connections = set()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def raw_server(answer: Callable[[socket.socket, int], None]) -> Iterator[int]:
    """A listener whose every accepted connection is handed to `answer(connection, its number)`."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def accept() -> None:
        number = 0
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection, number), daemon=True).start()
            number += 1

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()


def read_request(connection: socket.socket) -> bytes:
    """One request's bytes (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head


def pool_to(port: int, size: int = 4) -> ConnectionPool:
    return ConnectionPool("127.0.0.1", port, size, connect_timeout_s=2.0)


def test_an_answer_comes_whole_with_its_status_and_headers_by_any_case(echo):
    pool = pool_to(echo.server_port)
    body = bytes(range(256)) * 400  # 100 KB, every byte value
    reply = pool.post("/predictions/m", body, {"X-Hop": "yes"}, timeout_s=10)
    assert (reply.status, reply.data) == (201, body)
    assert reply.headers.get("X-GOT-HEADER") == reply.headers.get("x-got-header") == "yes"
    assert "Content-Length" in reply.headers


def test_one_connection_carries_request_after_request(echo):
    pool = pool_to(echo.server_port)
    answered_on = {pool.post("/p", b"x", {}, timeout_s=10).headers.get("x-connection") for _ in range(5)}
    assert len(answered_on) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_answered():
    def answer_once_then_close(connection: socket.socket, number: int) -> None:
        read_request(connection)
        connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{number}".encode())
        connection.close()  # kept alive by what it said, closed anyway (an idle timeout)

    for port in raw_server(answer_once_then_close):
        pool = pool_to(port)
        assert pool.post("/p", b"a", {}, timeout_s=10).data == b"0"
        assert pool.post("/p", b"b", {}, timeout_s=10).data == b"1"


def test_a_reused_connection_closed_as_the_request_went_is_sent_again_once():
    requests_seen = []

    def close_without_answering_the_second(connection: socket.socket, number: int) -> None:
        requests_seen.append(read_request(connection))
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if number == 0:
            read_request(connection)  # the second request on the kept connection: closed without an answer
            connection.close()
            return
        connection.close()

    for port in raw_server(close_without_answering_the_second):
        pool = pool_to(port)
        pool.post("/p", b"first", {}, timeout_s=10)
        assert pool.post("/p", b"second", {}, timeout_s=10).data == b"ok"
        assert len(requests_seen) == 2  # the first connection's request and the second's


def test_chunked_answers_and_answers_that_run_to_the_close_are_read_whole():
    def chunked(connection: socket.socket, number: int) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")

    def to_the_close(connection: socket.socket, number: int) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        connection.close()

    for port in raw_server(chunked):
        assert pool_to(port).post("/p", b"", {}, timeout_s=10).data == b"abcde"
    for port in raw_server(to_the_close):
        assert pool_to(port).post("/p", b"", {}, timeout_s=10).data == b"until the end"


def test_a_body_cut_short_is_unreachable_not_a_short_answer():
    def cut_short(connection: socket.socket, number: int) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        connection.close()

    for port in raw_server(cut_short):
        with pytest.raises(UpstreamUnreachable, match="cut short"):
            pool_to(port).post("/p", b"", {}, timeout_s=10)


def test_no_answer_in_time_is_a_timeout():
    answered = threading.Event()

    def silent(connection: socket.socket, number: int) -> None:
        read_request(connection)
        answered.wait(30)  # holds the connection open, answering nothing, until the test ends
        connection.close()

    for port in raw_server(silent):
        try:
            with pytest.raises(UpstreamTimeout):
                pool_to(port).post("/p", b"", {}, timeout_s=0.2)
        finally:
            answered.set()


def test_a_port_where_nothing_listens_is_unreachable(nothing_listens):
    with pytest.raises(UpstreamUnreachable):
        pool_to(nothing_listens).post("/p", b"", {}, timeout_s=5)


def test_what_is_not_http_is_unreachable():
    def garbage(connection: socket.socket, number: int) -> None:
        read_request(connection)
        connection.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        connection.close()

    for port in raw_server(garbage):
        with pytest.raises(UpstreamUnreachable, match="not an HTTP answer"):
            pool_to(port).post("/p", b"", {}, timeout_s=10)


def test_callers_past_the_pools_size_wait_for_a_free_connection(echo):
    pool = pool_to(echo.server_port, size=2)
    answers = []

    def call(index: int) -> None:
        answers.append(pool.post("/p", str(index).encode(), {}, timeout_s=30).data)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == sorted(str(i).encode() for i in range(12))
    assert len(echo.connections) <= 2
