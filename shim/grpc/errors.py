"""The gRPC front's errors and request metrics: every failure as a gRPC status, in one place.

Errors are raised where they are detected, as `ServingError`s of the contract's `Failure` kinds;
each RPC is wrapped by `answers_errors`, which turns them into the status a gRPC
client expects, echoes the call's id in its trailing metadata (`x-request-id`: the client's, or a new one),
and counts the call in the same metrics as the REST front's requests (front
"grpc", the RPC as the route, the status code's name). Nothing leaks a stack trace.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fastai_serving import tracing
from fastai_serving.contract.errors import Failure, Overloaded, ServingError
from fastai_serving_shim import metrics, observed

logger = logging.getLogger(__name__)
FRONT = "grpc"

GRPC_CODE = {
    Failure.BAD_INPUT: grpc.StatusCode.INVALID_ARGUMENT,  # bad image, wrong dtype or shape, unknown signature
    Failure.NOT_FOUND: grpc.StatusCode.NOT_FOUND,  # model or version
    Failure.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,  # over a size limit
    Failure.MODEL_FAILED: grpc.StatusCode.INTERNAL,  # the model failed on this request's input
    Failure.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,  # no ready worker, TorchServe unreachable
    Failure.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,  # the client's deadline or the predict timeout
    Failure.OUTDATED_ARCHIVE: grpc.StatusCode.FAILED_PRECONDITION,  # rebuild the archive
    Failure.REFUSED: grpc.StatusCode.FAILED_PRECONDITION,  # TorchServe refused it for a reason of its own
    Failure.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused before the queue: retry after the pushback
    Failure.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,  # no API key, or a wrong or revoked one
    Failure.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
}
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # gRFC A6's trailing metadata: when an overloaded call may be sent again

# The model a call names, once its servicer knows it: the metrics' model label (guarded by the service).
_call_model: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_call_model", default="")


def name_model(model: str) -> None:
    """Record which model this call is for (counted under it if the service confirms it is served)."""
    _call_model.set(model)


Method = TypeVar("Method", bound=Callable[..., Any])


def answers_errors(route: str, verb: str = "") -> Callable[[Method], Method]:
    """Wrap an RPC of a servicer with `service` and `protocol`: errors end the call with their gRPC code and
    message (anything unexpected is INTERNAL), and every call is counted under `route`."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        def rpc(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            token = _call_model.set("")
            code = grpc.StatusCode.OK
            record = observed.begin(FRONT, request_id_of(context))
            echoed = ((observed.REQUEST_ID_METADATA, record.request_id),)
            span = _call_span(route, context, self.protocol, record.request_id)
            metrics.IN_FLIGHT.inc()
            try:
                answer = method(self, request, context)
                context.set_trailing_metadata(echoed)
                return answer
            except ServingError as error:
                code = GRPC_CODE[error.failure]
                pushback = ()
                if isinstance(error, Overloaded):
                    pushback = ((RETRY_PUSHBACK, str(math.ceil(error.retry_after_s * 1000))),)
                context.abort(code, error.message, pushback + echoed)
            except Exception:
                logger.exception("unexpected error in %s (request %s)", route, record.request_id)
                code = grpc.StatusCode.INTERNAL
                context.abort(code, "internal error in the gRPC front", echoed)
            finally:
                metrics.IN_FLIGHT.dec()
                self.service.count(FRONT, self.protocol, route, verb, _call_model.get(), code.name,
                                   time.perf_counter() - started)  # fmt: skip
                tracing.finished(*span, model=_call_model.get(), status=code.name)
                _call_model.reset(token)
                observed.end()

        return rpc  # type: ignore[return-value]

    return wrap


def _call_span(route: str, context: grpc.ServicerContext, protocol: str, request_id: str) -> tuple:
    """The call's span, under the client's `traceparent` metadata, when traces are on."""
    if not tracing.ON:
        return None, None
    parent = tracing.parent_of(dict(context.invocation_metadata() or ()))
    return tracing.started(route, parent, "SERVER", front=FRONT, protocol=protocol, request_id=request_id)


def request_id_of(context: grpc.ServicerContext) -> str | None:
    """The client's `x-request-id` metadata, if it sent one."""
    metadata = context.invocation_metadata() or ()
    return next((value for key, value in metadata if key == observed.REQUEST_ID_METADATA), None)
