"""The one error vocabulary, from the contract to every front: what went wrong, never how a protocol says it.

Errors are raised where they are detected, as a `ServingError` of a `Failure` kind with a message a client
can act on (naming the instance where it applies; never a stack trace or a server path). Each transport
maps a kind onto its own answer in one place: the REST front and the handler onto an HTTP status
(`HTTP_STATUS`: the handler's travels back through TorchServe), the gRPC front onto a status code.
"""

from __future__ import annotations

from enum import Enum


class Failure(Enum):
    BAD_INPUT = "bad_input"  # the request: a bad body, image, row or text; a wrong verb or signature for the task
    NOT_FOUND = "not_found"  # a model or version the server does not have
    TOO_LARGE = "too_large"  # a body or message over a size limit
    MODEL_FAILED = "model_failed"  # the model raised on this request's input (the worker survived)
    UNAVAILABLE = "unavailable"  # no ready worker, TorchServe unreachable or busy: retry later
    TIMEOUT = "timeout"  # no answer within the deadline (the client's or the predict timeout)
    OUTDATED_ARCHIVE = "outdated_archive"  # the archive's handler is older than this front needs: rebuild it
    REFUSED = "refused"  # TorchServe refused the request for another reason of its own
    OVERLOADED = "overloaded"  # refused before the queue: it could not be answered in time (retry after a hint)
    UNAUTHENTICATED = "unauthenticated"  # no API key, or not one the server holds (the fronts' access check)
    FORBIDDEN = "forbidden"  # a route this caller may not reach at all (/metrics from another machine)


# Each kind's HTTP status: the REST front's answer, and the handler's to TorchServe (which needs one; the kind
# itself travels in a header beside it, contract/upstream.py). The handler never answers the fronts' own kinds
# (OVERLOADED, UNAUTHENTICATED, FORBIDDEN).
HTTP_STATUS = {
    Failure.BAD_INPUT: 400,
    Failure.NOT_FOUND: 404,
    Failure.TOO_LARGE: 413,
    Failure.MODEL_FAILED: 500,
    Failure.UNAVAILABLE: 503,
    Failure.TIMEOUT: 504,
    Failure.OUTDATED_ARCHIVE: 412,
    Failure.REFUSED: 400,
    Failure.OVERLOADED: 429,  # with Retry-After
    Failure.UNAUTHENTICATED: 401,  # with WWW-Authenticate: Bearer (RFC 6750)
    Failure.FORBIDDEN: 403,
}


class ServingError(Exception):
    """An error a client is answered with: its kind and a message it can act on."""

    failure = Failure.MODEL_FAILED

    def __init__(self, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        self.message = message
        if failure is not None:
            self.failure = failure


class BadInput(ServingError, ValueError):
    """A request the server cannot answer because of what the client sent."""

    failure = Failure.BAD_INPUT


class NotFound(ServingError):
    """A model or version the server does not have (or a name no model could have)."""

    failure = Failure.NOT_FOUND


class Overloaded(ServingError):
    """A request refused before it was queued, because it could not be answered before its deadline (or the queue
    is already as long as keeps the workers busy): the client may send it again after `retry_after_s`."""

    failure = Failure.OVERLOADED

    def __init__(self, message: str, retry_after_s: float, reason: str = "queue") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # "deadline" (it could not be met) or "queue" (the queue was at its target)


class ModelError(RuntimeError):
    """The exported Learner cannot be loaded or served (a deployment problem, not a client's)."""


def json_type(value: object) -> str:
    """How a message names a JSON value's type: "an object", "a list", "a string", "null"..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
