"""What a gRPC servicer's context says is left of a call's deadline, read around one of its methods.

gRPC sends a deadline on the wire as a rounded `grpc-timeout`, and the server's clock starts when it reads
it, so what the server sees may exceed what the client set: the fronts promise to carry what gRPC
delivered to them, never more. A test compares what went upstream with the context's own readings.
"""

from __future__ import annotations

import pytest


def time_remaining_around(monkeypatch: pytest.MonkeyPatch, servicer: type, method: str) -> list[float]:
    """[before, after]: the context's time_remaining() as `method` of `servicer` begins and as it ends (filled
    once the call ran). Patch before the front is built: gRPC binds the servicer's methods then."""
    readings: list[float] = []
    original = getattr(servicer, method)

    def read_around(self, request, context):
        readings.append(context.time_remaining())
        try:
            return original(self, request, context)
        finally:
            readings.append(context.time_remaining())

    monkeypatch.setattr(servicer, method, read_around)
    return readings
