"""The service's errors, in one front-neutral vocabulary: what went wrong, never how a protocol says it.

The service and the body contract raise these where they detect a problem; each front maps a
`Failure` onto its own answers in one place (the REST front: `rest_errors.HTTP_STATUS`; the gRPC
front: `grpc_errors.GRPC_CODE`). The core's own errors (`fastai_serving.errors.ServingError`,
e.g. a bad image) carry the HTTP status the handler answers with; `failure_of` reads them.
"""

from __future__ import annotations

from enum import Enum

from fastai_serving.errors import ServingError


class Failure(Enum):
    BAD_INPUT = "bad_input"  # the request: a bad body, image, row or text; a wrong verb or signature for the task
    NOT_FOUND = "not_found"  # a model or version the server does not have
    TOO_LARGE = "too_large"  # a body or message over a size limit
    MODEL_FAILED = "model_failed"  # the model raised on this request's input (the worker survived)
    UNAVAILABLE = "unavailable"  # no ready worker, TorchServe unreachable or busy: retry later
    TIMEOUT = "timeout"  # no answer within the deadline (the client's or the predict timeout)
    OUTDATED_ARCHIVE = "outdated_archive"  # the archive's handler is older than this front needs: rebuild it
    REFUSED = "refused"  # TorchServe refused the request for another reason of its own (its 4xx)


class ServiceError(Exception):
    """An error a client is answered with: what failed and a message it can act on (naming the instance)."""

    def __init__(self, failure: Failure, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.upstream_status = upstream_status  # TorchServe's own status, for a REFUSED answer


# The handler's and the core's HTTP statuses, as failures.
_FAILURE_OF_STATUS = {
    400: Failure.BAD_INPUT,
    404: Failure.NOT_FOUND,
    413: Failure.TOO_LARGE,
    500: Failure.MODEL_FAILED,
    503: Failure.UNAVAILABLE,
    504: Failure.TIMEOUT,
}


def failure_of_status(status: int) -> Failure:
    """The failure a handler's (or the core's) HTTP status stands for."""
    if status in _FAILURE_OF_STATUS:
        return _FAILURE_OF_STATUS[status]
    return Failure.REFUSED if 400 <= status < 500 else Failure.MODEL_FAILED


def service_error(error: ServingError) -> ServiceError:
    """The core's error (a bad instance, a name that is not a model's) in the service's vocabulary."""
    return ServiceError(failure_of_status(error.status), error.message)
