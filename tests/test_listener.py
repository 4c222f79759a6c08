"""Readying a front's listener to close: stop new handshakes where the kernel allows it, never fail where it does not."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from fastai_serving_shim import listener
from harness.unprivileged import Unprivileged


class RefusingSocket:
    """A listening socket whose kernel refuses this process a socket filter (EPERM), as for uid 10001 here."""

    def setsockopt(self, *args) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def getsockopt(self, *args) -> bytes:
        return bytes(104)  # struct tcp_info: nothing queued


def test_a_refused_socket_filter_means_a_plain_close_said_in_the_log_not_an_error():
    quiesced = listener.quiesce(RefusingSocket(), timeout_s=1)
    assert quiesced == listener.Quiesced(False, 0, listener.PLAIN_CLOSE_UNPRIVILEGED)


def test_a_listener_with_a_queued_connection_waits_for_it_to_be_accepted_then_stops_handshakes():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        assert listener.queued(server) == 1
        connection, _ = server.accept()
        quiesced = listener.quiesce(server, timeout_s=5)
        connection.close()
        client.close()
    assert quiesced.left == 0 and quiesced.how in (listener.NO_RESET, listener.PLAIN_CLOSE_UNPRIVILEGED)


QUIESCE = """
import json, socket
from fastai_serving_shim import listener
server = socket.create_server(("127.0.0.1", 0))
print(json.dumps(listener.quiesce(server, timeout_s=1).__dict__))
"""


def test_as_the_image_runs_uid_10001_without_capabilities_quiesce_answers_and_never_raises():
    """The image's crash on SIGTERM: this kernel refuses uid 10001 the filter; quiesce must say so, not raise."""
    folder = Path(tempfile.mkdtemp(prefix="fastai-serving-listener-"))  # pytest's temp folders are root's alone
    try:
        run = Unprivileged(folder)
        command = run.command([str(run.python), "-c", QUIESCE])
        done = subprocess.run(command, env=run.environment(), capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    quiesced = json.loads(done.stdout)
    assert quiesced["left"] == 0
    if quiesced["stopped_handshakes"]:
        assert quiesced["how"] == listener.NO_RESET
    else:
        assert quiesced["how"] == listener.PLAIN_CLOSE_UNPRIVILEGED
