"""The gRPC front's errors: a `ServingError`'s HTTP status as a gRPC status code, in one place.

Errors are raised where they are detected, with the HTTP status the REST shim answers and
the same message; each RPC is wrapped by `answers_errors`, which turns them into the gRPC
status a TF Serving client expects. Nothing leaks a stack trace.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fastai_serving.errors import ServingError

logger = logging.getLogger(__name__)

# TF Serving's codes for what the REST shim answers with these HTTP statuses.
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # bad image, wrong dtype or shape, unknown signature
    404: grpc.StatusCode.NOT_FOUND,  # model or version
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # over a size limit
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,  # the model failed on this request's input
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,  # no ready worker, TorchServe unreachable
    504: grpc.StatusCode.DEADLINE_EXCEEDED,  # the client's deadline or the predict timeout
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status: the table above; another 4xx is a failed precondition, else internal."""
    if http_status in HTTP_TO_GRPC:
        return HTTP_TO_GRPC[http_status]
    return grpc.StatusCode.FAILED_PRECONDITION if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


Method = TypeVar("Method", bound=Callable[..., Any])


def answers_errors(method: Method) -> Method:
    """Wrap an RPC: a `ServingError` ends the call with its gRPC code and message; anything else is INTERNAL."""

    @functools.wraps(method)
    def rpc(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(grpc_code(error.status), error.message)
        except Exception:
            logger.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the gRPC front")

    return rpc  # type: ignore[return-value]
