"""The errors the core raises, each with the HTTP status a front answers it with, and how messages name JSON types."""

from __future__ import annotations


class ServingError(Exception):
    """An error a client is answered with: an HTTP status and a message it can act on.

    The message says what was wrong and, where it applies, which instance. It never
    carries a stack trace or a server path. Fronts turn it into their own form (an HTTP
    status and {"error": ...}, or a gRPC status) in one place each.
    """

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadInput(ServingError, ValueError):
    """A request the server cannot answer because of what the client sent (HTTP 400, or 404 for a name)."""

    status = 400


class ModelError(RuntimeError):
    """The exported Learner cannot be loaded or served (a deployment problem, not a client's)."""


def json_type(value: object) -> str:
    """How a message names a JSON value's type: "an object", "a list", "a string", "null"..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
