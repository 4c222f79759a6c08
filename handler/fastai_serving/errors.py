"""The one error type the core raises for a client's mistake."""


class BadInput(ValueError):
    """A request the server cannot answer because of what the client sent (HTTP 400).

    The message says what was wrong and, where it applies, which instance, so the
    client can act on it. It never carries a stack trace or a server path.
    """

    status = 400


class ModelError(RuntimeError):
    """The exported Learner cannot be loaded or served (a deployment problem, not a client's)."""
