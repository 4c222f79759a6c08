"""The inference call's HTTP: one POST over a kept-alive loopback connection, in as little Python as HTTP/1.1 allows.

Every prediction crosses this hop, and urllib3 spent about 0.7 ms of the front's CPU on each (its
request and response objects, `http.client`'s header parsing through the `email` package): as much as
the rest of the front's work on a request. This client does only what the hop needs: it sends the
request line, headers and body in one write, reads the status line and headers with a buffered
reader, and the body by its Content-Length (or its chunks, or to the end where the server closes).
Connections are kept alive and reused, at most `size` at once (callers wait for a free one, as
urllib3's blocking pool did). A reused connection the server had closed while it sat idle is found
before the request is written (a readable idle socket), or when the write fails or nothing at all
comes back; then the request is sent once more on a new connection (a prediction changes nothing,
so sending it again is safe).

Errors come out as `UpstreamUnreachable` (no connection, or the connection broke) and `UpstreamTimeout`
(no complete answer in time); shim/torchserve.py says what each means to a client.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

MAX_HEADER_LINE = 65536  # bytes in one status or header line
MAX_HEADERS = 100  # header lines in one answer
READ_BUFFER = 65536  # bytes each connection's reader asks the socket for at once


class UpstreamUnreachable(Exception):
    """No connection could be made, or the connection broke before the whole answer came."""


class UpstreamTimeout(Exception):
    """The answer did not come, whole, within the call's time."""


class Headers(dict):
    """An answer's headers by lower-case name; `get` takes a name in any case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)


@dataclass
class Reply:
    """One HTTP answer: its status, headers and whole body."""

    status: int
    headers: Headers = field(default_factory=Headers)
    data: bytes = b""


class _Connection:
    def __init__(self, host: str, port: int, connect_timeout_s: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as error:  # refused, unreachable, or no handshake in time
            raise UpstreamUnreachable(str(error)) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=READ_BUFFER)

    def closed_by_peer(self) -> bool:
        """Whether the idle connection has something to read: the server's close (or bytes it should not have sent)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ConnectionPool:
    """Kept-alive connections to one HTTP server, at most `size` in use at once."""

    def __init__(self, host: str, port: int, size: int, connect_timeout_s: float) -> None:
        self.host, self.port, self.connect_timeout_s = host, port, connect_timeout_s
        self.host_header = f"{host}:{port}".encode("ascii")
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Reply:
        """POST `body` to `path`; the whole answer, whatever its status. `timeout_s` bounds the wait for a free
        connection and, from the request's sending, the answer."""
        began = time.monotonic()
        if not self._slots.acquire(timeout=timeout_s):
            raise UpstreamTimeout(f"no connection to {self.host}:{self.port} came free in {timeout_s:g} s")
        try:
            request = self._request(path, body, headers)

            def left() -> float:  # what is left of the call's time, the retry's included
                return max(0.001, timeout_s - (time.monotonic() - began))

            connection, reused = self._connection(left())
            try:
                return self._exchange(connection, request, left())
            except _StaleConnection:
                if reused:  # the server closed it while it sat idle: once more, on a new connection
                    try:
                        return self._exchange(self._new_connection(left()), request, left())
                    except _StaleConnection:
                        pass
                raise UpstreamUnreachable("the connection closed before any answer came") from None
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [b"POST " + path.encode("ascii") + b" HTTP/1.1", b"Host: " + self.host_header]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _connection(self, timeout_s: float) -> tuple[_Connection, bool]:
        """An idle connection the server still holds open (reused: True), else a new one."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new_connection(timeout_s), False
            if not connection.closed_by_peer():
                return connection, True
            connection.close()

    def _new_connection(self, timeout_s: float) -> _Connection:
        """A new connection, its handshake given the pool's connect time or what is left of the call's, the shorter."""
        return _Connection(self.host, self.port, min(self.connect_timeout_s, timeout_s))

    def _exchange(self, connection: _Connection, request: bytes, timeout_s: float) -> Reply:
        """Send `request` and read its answer; the connection goes back to the idle ones if it may be reused."""
        keep = False
        try:
            connection.sock.settimeout(timeout_s)
            try:
                connection.sock.sendall(request)
                status_line = connection.reader.readline(MAX_HEADER_LINE + 1)
            except (BrokenPipeError, ConnectionResetError):
                raise _StaleConnection() from None
            if not status_line:
                raise _StaleConnection()
            reply, keep = _read_answer(connection.reader, status_line)
            return reply
        except TimeoutError:  # socket.timeout: the answer did not come whole in time
            raise UpstreamTimeout(f"no whole answer from {self.host}:{self.port} in {timeout_s:g} s") from None
        except OSError as error:
            raise UpstreamUnreachable(str(error)) from None
        finally:
            if keep:
                with self._lock:
                    self._idle.append(connection)
            else:
                connection.close()


class _StaleConnection(Exception):
    """The server closed the connection before any of the answer came."""


def _read_answer(reader, status_line: bytes) -> tuple[Reply, bool]:
    """The answer after its status line, and whether the connection may carry another request."""
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise UpstreamUnreachable(f"not an HTTP answer: {status_line[:80]!r}")
    headers = Headers()
    for _ in range(MAX_HEADERS + 1):
        line = reader.readline(MAX_HEADER_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line or len(line) > MAX_HEADER_LINE or b":" not in line:
            raise UpstreamUnreachable("the answer's headers were cut short or malformed")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise UpstreamUnreachable(f"over {MAX_HEADERS} header lines in the answer")
    keep = parts[0] == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        data = _read_chunks(reader)
    elif "content-length" in headers:
        data = _read_exactly(reader, int(headers["content-length"]))
    else:  # the body runs to the connection's end
        data, keep = reader.read(), False
    return Reply(int(parts[1]), headers, data), keep


def _read_exactly(reader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise UpstreamUnreachable(f"the answer's body was cut short ({len(data)} of {size} bytes)")
    return data


def _read_chunks(reader) -> bytes:
    chunks = []
    while True:
        size_line = reader.readline(MAX_HEADER_LINE + 1)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise UpstreamUnreachable("a malformed chunk in the answer") from None
        if size == 0:
            while reader.readline(MAX_HEADER_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        chunks.append(_read_exactly(reader, size))
        reader.readline(MAX_HEADER_LINE + 1)  # the CRLF after each chunk
