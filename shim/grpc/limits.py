"""The gRPC front's defences against slow and idle clients: grpc's own server limits, and a receive deadline.

The front is a `grpc.aio` server: HTTP/2 is read on its event loop, so a call whose request
message trickles in costs no thread. `ReceiveDeadline` reads each call's one request message
with a deadline (DEADLINE_EXCEEDED past it) and only then hands the call to the front's
synchronous servicers on the thread pool; `server_options` and `MAX_CONCURRENT_RPCS` give
grpc's caps on streams, idle and old connections, and calls in flight (RESOURCE_EXHAUSTED past it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import grpc

from fastai_serving import defaults


def server_options(settings) -> list[tuple[str, int]]:
    """grpc's channel arguments for the front's limits, from the shim's settings."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # Keepalive enforcement: a client may ping with no call in flight, but no more often than this.
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.grpc_min_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        # The server's own pings find dead peers: every idle interval, answered within a keepalive timeout.
        ("grpc.keepalive_time_ms", ms(settings.grpc_max_connection_idle_s)),
        ("grpc.keepalive_timeout_ms", ms(defaults.GRPC_KEEPALIVE_TIMEOUT_S)),
        ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle_s)),
        # A maximum age sends GOAWAY so clients reconnect, through a load balancer to another replica.
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace_s)),
    ]


class ThreadContext:
    """An aio call's context as a synchronous servicer on a pool thread uses it."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        raise _Abort(code, details, trailing_metadata)  # the call's coroutine sends the status, on the event loop

    def time_remaining(self) -> float:
        remaining = self._context.time_remaining()
        return float("inf") if remaining is None else remaining  # no deadline: as grpc's synchronous server says

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def set_trailing_metadata(self, trailing_metadata: tuple) -> None:
        self._context.set_trailing_metadata(trailing_metadata)  # kept by the call, sent when its coroutine ends

    def peer(self) -> str:
        return self._context.peer()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def is_active(self) -> bool:
        return not self._context.done()


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple = ()) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class ReceiveDeadline(grpc.aio.ServerInterceptor):
    """Every unary-request call of a synchronous servicer: its message read within `timeout_s`, then run on `pool`.

    grpc's aio server reads a unary call's message before it runs the handler, with no deadline of
    its own; as a stream-request handler the call's message is read here, on the event loop, with one.
    """

    def __init__(self, timeout_s: float, pool: Executor) -> None:
        self.timeout_s, self.pool = timeout_s, pool

    async def intercept_service(self, continuation: Callable, handler_call_details) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if asyncio.iscoroutinefunction(handler.unary_unary or handler.unary_stream):
            return handler  # an async servicer reads on the loop already (the health service)
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            self._unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _request(self, context: grpc.aio.ServicerContext):
        try:
            request = await asyncio.wait_for(context.read(), self.timeout_s)
        except asyncio.TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self.timeout_s:g} s of the call's start",
            )
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request message")
        return request

    def _unary(self, behaviour: Callable) -> Callable:
        async def handle(_requests, context: grpc.aio.ServicerContext):
            request = await self._request(context)
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self.pool, behaviour, request, ThreadContext(context)
                )
            except _Abort as abort:
                await context.abort(abort.code, abort.details, abort.trailing_metadata)

        return handle

    def _streaming(self, behaviour: Callable) -> Callable:
        async def handle(_requests, context: grpc.aio.ServicerContext):
            request = await self._request(context)
            loop, done = asyncio.get_running_loop(), object()
            responses = iter(await loop.run_in_executor(self.pool, behaviour, request, ThreadContext(context)))
            try:
                while (response := await loop.run_in_executor(self.pool, next, responses, done)) is not done:
                    yield response
            except _Abort as abort:
                await context.abort(abort.code, abort.details, abort.trailing_metadata)

        return handle
