"""The ports the test servers are given: each free when drawn, none drawn twice, and a port that refuses connections
held for as long as a test needs nothing to listen there."""

from __future__ import annotations

import socket

import pytest

from harness.servers import free_port, refusing_port


def test_no_port_is_handed_out_twice_even_before_any_is_bound():
    # A server's several ports, and a test's "nothing there" beside the shim it starts, are drawn before any binds.
    drawn = [free_port() for _ in range(2000)]
    assert len(set(drawn)) == len(drawn)


def test_a_refusing_port_refuses_connections_and_no_server_can_take_it():
    with refusing_port() as port:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.socket() as server, pytest.raises(OSError):
            server.bind(("127.0.0.1", port))
