"""Closing a listening socket without resetting a client: stop new handshakes, answer what is queued, then close.

A TCP listener that closes with connections still in its accept queue resets them: a client
that connected a moment before the server stopped sees "connection reset". So a front about
to stop first attaches a socket filter that drops every new packet to the listener (a new
client's SYN goes unanswered, it retries, and by then finds the port closed: "connection
refused", which every client retries elsewhere), lets its workers accept what is already
queued, and only then closes.

The kernel may refuse that filter: a classic BPF filter on a listening socket is refused to a
process without privileges on kernels that restrict BPF (`kernel.unprivileged_bpf_disabled`),
which is how the image and the Kubernetes manifests run (uid 10001, no capabilities). Then, and
off Linux, the front closes plainly once its workers accepted what was queued: after the drain,
when load balancers have stopped sending, a connection arriving in that moment may still be reset.
`Quiesced.how` says which close it was, for the log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

LISTEN_FD = "FASTAI_SERVING_LISTEN_FD"  # the REST front's listening socket, bound by scripts/serve and handed down
SO_ATTACH_FILTER = 26  # Linux's <asm-generic/socket.h>
_DROP_EVERY_PACKET = struct.pack("HBBI", 0x06, 0, 0, 0)  # classic BPF: "ret #0", keep no byte of any packet
_TCP_INFO_SIZE = 104
_TCPI_UNACKED = 24  # struct tcp_info's tcpi_unacked: a listener's accept queue length


NO_RESET = "no new handshake, every queued connection accepted"
PLAIN_CLOSE_UNPRIVILEGED = (
    "plain close: the kernel refuses this process the socket filter that stops new handshakes (no privilege); "
    "a connection arriving as the front closes may be reset"
)
PLAIN_CLOSE_NOT_LINUX = "plain close: stopping new handshakes needs Linux's socket filters"


@dataclass(frozen=True)
class Quiesced:
    """How a listener was readied to close: whether new handshakes were stopped, and the connections left queued."""

    stopped_handshakes: bool
    left: int
    how: str  # one of the messages above, for the front's log


def stop_handshakes(listener: socket.socket) -> bool:
    """Drop every new connection attempt to `listener` (connections already queued or accepted are untouched).

    False where that cannot be done: off Linux, or where the kernel refuses this process the filter (EPERM).
    """
    if not sys.platform.startswith("linux"):
        return False
    program = (ctypes.c_uint8 * len(_DROP_EVERY_PACKET)).from_buffer_copy(_DROP_EVERY_PACKET)
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(program)))
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES):
            return False
        raise
    return True  # the kernel copied the program: `program` may go


def queued(listener: socket.socket) -> int:
    """How many connections wait in `listener`'s accept queue."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    return struct.unpack_from("I", info, _TCPI_UNACKED)[0]


def wait_until_accepted(listener: socket.socket, timeout_s: float) -> int:
    """Wait until the front's workers took every queued connection (or the timeout); how many are left."""
    deadline = time.monotonic() + timeout_s
    while (left := queued(listener)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def quiesce(listener: socket.socket, timeout_s: float) -> Quiesced:
    """Stop new handshakes where the kernel lets this process, then wait for the queue to be accepted."""
    stopped = stop_handshakes(listener)
    if stopped:
        how = NO_RESET
    else:
        how = PLAIN_CLOSE_UNPRIVILEGED if sys.platform.startswith("linux") else PLAIN_CLOSE_NOT_LINUX
    left = wait_until_accepted(listener, timeout_s) if sys.platform.startswith("linux") else 0
    return Quiesced(stopped, left, how)


def own_listeners(port: int) -> list[socket.socket]:
    """This process's listening TCP sockets on `port` (a server library's own, which it does not hand out)."""
    found = []
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            listening = candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if candidate.type == socket.SOCK_STREAM and listening and candidate.getsockname()[1] == port:
                found.append(candidate)
                continue
        except (OSError, IndexError, TypeError):
            pass
        candidate.close()
    return found
