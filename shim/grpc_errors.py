"""The gRPC front's errors and request metrics: every failure as a gRPC status, in one place.

Errors are raised where they are detected, as the service's `ServiceError`s (or the core's
errors); each RPC is wrapped by `answers_errors`, which turns them into the status a gRPC
client expects and counts the call in the same metrics as the REST front's requests (front
"grpc", the RPC as the route, the status code's name). Nothing leaks a stack trace.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fastai_serving.errors import ServingError
from fastai_serving_shim import metrics
from fastai_serving_shim.errors import Failure, ServiceError, service_error

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
}

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
            metrics.IN_FLIGHT.inc()
            try:
                return method(self, request, context)
            except (ServiceError, ServingError) as error:
                failure = error if isinstance(error, ServiceError) else service_error(error)
                code = GRPC_CODE[failure.failure]
                context.abort(code, failure.message)
            except Exception:
                logger.exception("unexpected error in %s", route)
                code = grpc.StatusCode.INTERNAL
                context.abort(code, "internal error in the gRPC front")
            finally:
                metrics.IN_FLIGHT.dec()
                self.service.count(FRONT, self.protocol, route, verb, _call_model.get(), code.name,
                                   time.perf_counter() - started)  # fmt: skip
                _call_model.reset(token)

        return rpc  # type: ignore[return-value]

    return wrap
