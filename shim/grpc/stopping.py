"""The gRPC front's stop: new calls answered UNAVAILABLE while the calls in flight finish.

grpc's own `server.stop(grace)` cancels every call that arrives during the grace (CANCELLED, which a
client's retry policy does not retry by default). `StopGate` comes first among the front's
interceptors: once `close()` is called, a new call (health checks aside) is answered UNAVAILABLE
("the server is stopping"), which clients and load balancers retry elsewhere, and `drained(timeout_s)`
waits until the calls already running have finished and no new call has come for a moment
(defaults.GRPC_STOP_QUIET_S); only then does the front stop grpc's server. The moment is for calls that
grpc had received on a connection opened before the stop but not yet handed to the front: its stop
would cancel them (CANCELLED, seen once on a loaded 2-core machine), where the gate refuses them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

import grpc

from fastai_serving import defaults

HEALTH_PREFIX = "/grpc.health.v1.Health/"  # probes keep their answers (NOT_SERVING) to the end
STOPPING = "the server is stopping: send the call again (to another replica)"


class StopGate(grpc.aio.ServerInterceptor):
    """Counts the calls in flight; once closed, refuses new ones. Lives on the front's event loop."""

    def __init__(self) -> None:
        self.closed = False
        self.in_flight = 0
        self.last_call = time.monotonic()  # when a call last came (answered or refused)
        self._changed = asyncio.Event()  # set at each call's end (bound to the loop at its first use)

    async def intercept_service(self, continuation: Callable, handler_call_details) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        self.last_call = time.monotonic()
        if self.closed:
            return _refusing(handler)
        return _counted(handler, self)

    def close(self) -> None:
        """From now on, new calls are refused (called on the loop)."""
        self.closed = True

    async def drained(self, timeout_s: float, quiet_s: float = defaults.GRPC_STOP_QUIET_S) -> float:
        """Wait until no call is in flight and none came for `quiet_s`, at most `timeout_s`; the seconds left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.in_flight:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                continue
            quiet_for_s = time.monotonic() - self.last_call
            if quiet_for_s >= quiet_s:
                break
            await asyncio.sleep(min(quiet_s - quiet_for_s, max(0.0, deadline - time.monotonic())))
        return max(0.0, deadline - time.monotonic())

    def _begin(self) -> None:
        self.in_flight += 1

    def _end(self) -> None:
        self.in_flight -= 1
        self._changed.set()


def _counted(handler: grpc.RpcMethodHandler, gate: StopGate) -> grpc.RpcMethodHandler:
    """`handler` with its call counted in flight from start to end (every behaviour kind, sync or async)."""
    kind, behaviour = _behaviour(handler)
    if behaviour is None or not (asyncio.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        return handler  # a synchronous handler: the front has none (grpc_limits.ReceiveDeadline wraps them)
    if inspect.isasyncgenfunction(behaviour):

        async def run(request, context):
            gate._begin()
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                gate._end()

    else:

        async def run(request, context):
            gate._begin()
            try:
                return await behaviour(request, context)
            finally:
                gate._end()

    return _handler(kind, run, handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s message types that answers UNAVAILABLE without reading the request."""

    async def refuse(_requests, context):
        await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)

    return grpc.stream_unary_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _behaviour(handler: grpc.RpcMethodHandler) -> tuple[str, Callable | None]:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return kind, behaviour
    return "unary_unary", None


def _handler(kind: str, behaviour: Callable, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(behaviour, request_deserializer=like.request_deserializer, response_serializer=like.response_serializer)
