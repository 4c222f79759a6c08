"""A loopback XYZ imagery server for tests and benchmarks: real tile bytes at /{z}/{x}/{y}.png, with scripted faults.

Faults, by tile key (`x-y-z`): `flaky` answers 500 to a tile's first N requests, `slow` waits before
answering, and a tile not in `tiles` is a 404. `hold_after` answers that many requests, then holds every
other until `release()`: a client stopped part-way, however fast it runs. `requests` counts every GET per key.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PATH = re.compile(r"^/(\d+)/(\d+)/(\d+)\.png$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up mid-answer (a killed predict-batch) is expected here, not an error to print."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class TileServer:
    def __init__(
        self,
        tiles: dict[str, bytes],
        *,
        flaky: dict[str, int] | None = None,
        slow: dict[str, float] | None = None,
        delay_s: float = 0.0,
        hold_after: int | None = None,
    ) -> None:
        self.tiles, self.flaky, self.slow, self.delay_s = tiles, flaky or {}, slow or {}, delay_s
        self.hold_after = hold_after
        self.requests: Counter[str] = Counter()
        self._answered = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def template(self) -> str:
        """The imagery URL template predict-batch takes (--imagery)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{{z}}/{{x}}/{{y}}.png"

    def _answer(self, key: str) -> tuple[int, bytes]:
        with self._lock:
            self.requests[key] += 1
            count = self.requests[key]
            self._answered += 1
            held = self.hold_after is not None and self._answered > self.hold_after
        if held:
            self._released.wait()
        time.sleep(self.slow.get(key, self.delay_s))
        if count <= self.flaky.get(key, 0):
            return 500, b"imagery backend hiccup"
        if key not in self.tiles:
            return 404, b"no such tile"
        return 200, self.tiles[key]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as imagery servers answer

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                match = _PATH.match(self.path)
                status, body = (
                    (404, b"not a tile path") if not match else server._answer("{1}-{2}-{0}".format(*match.groups()))
                )
                self.send_response(status)
                self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass  # quiet: the tests count requests instead

        return Handler

    def __enter__(self) -> TileServer:
        self._thread.start()
        return self

    def release(self) -> None:
        """Answer the held requests and every one after them."""
        self._released.set()

    def __exit__(self, *_: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
