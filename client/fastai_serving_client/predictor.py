"""Sending images to a TF-Serving endpoint: one small interface, `Predictor`, that both forms implement.

`RestPredictor` (rest_predictor.py) POSTs TF Serving's REST row form; `GrpcPredictor` (grpc_predictor.py)
calls TF Serving's PredictionService/Predict. Both answer the same predictions for the same images; the
runner needs nothing else. Both import this module and neither the other (protocol.py picks one).
What a predictor raises tells the runner what to do:
- `InputRejected`: the server refused this request's input (REST: 400, 413, 422, or 500: the model
  failed on it; gRPC: INVALID_ARGUMENT, OUT_OF_RANGE, INTERNAL, or RESOURCE_EXHAUSTED for a message
  over a size limit). The runner sends a multi-image batch again one image at a time to find the
  bad one(s); a single image refused is recorded as failed with the server's message.
- `ServerFailed`: the server cannot serve at all (unknown model, refused credentials, still
  unavailable after every retry, an answer that is not TF Serving's; gRPC: NOT_FOUND, UNIMPLEMENTED,
  UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION and the rest): the run stops, keeping what it committed.
- Transient failures are retried with backoff inside `predict`, at most --tries times: REST's 503, 504, 502 and
  dropped connections, obeying Retry-After; gRPC's UNAVAILABLE (unreachable, too), DEADLINE_EXCEEDED, ABORTED
  and CANCELLED, obeying a `retry-after` in the trailing metadata.
- Refusals are sent again after the server's hint, however many: REST's 429 (Retry-After, in seconds or an
  HTTP date), gRPC's RESOURCE_EXHAUSTED when busy (`grpc-retry-pushback-ms`, gRFC A6's name). The server is
  saying it is full, not failing: the concurrency controller (concurrency.py), which hears of every attempt
  through the predictor's observer, sends less.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from .concurrency import UNOBSERVED, Observer
from .retry import Backoff, GaveUp, with_retries


class InputRejected(Exception):
    """The server refused this request's input: its status and message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class ServerFailed(Exception):
    """The server cannot serve this run: stop, keep what is committed, say why."""


class Predictor(Protocol):
    endpoint: str  # where the requests go, for messages

    def predict(self, images: list[bytes]) -> list[Any]:
        """One prediction per image, in order (TF Serving's `predictions`)."""

    def class_names(self) -> list[str] | None:
        """The model's classes in output order, where the server's metadata tells them; else None."""

    def description(self) -> dict | None:
        """fastai-serving's description of the model (task, classes, inputs), where the server gives it; else None."""


def classes_in(description: dict | None) -> list[str] | None:
    """The class names of a model's description, in output order; None where it lists none."""
    classes = (description or {}).get("classes")
    return [str(name) for name in classes] if isinstance(classes, list) and classes else None


def predictions_tried(
    send: Callable[[], Any],
    count: int,
    endpoint: str,
    backoff: Backoff,
    stopping: threading.Event,
    observer: Observer = UNOBSERVED,
) -> list[Any]:
    """`send()`'s predictions, tried again while it raises `Retryable`: one per image, or ServerFailed saying why not."""
    try:
        predictions = with_retries(send, backoff, stopping, observer)
    except GaveUp as failure:
        raise ServerFailed(f"{endpoint} is unavailable: {failure}") from failure
    if not isinstance(predictions, list) or len(predictions) != count:
        answered = len(predictions) if isinstance(predictions, list) else "no list of"
        raise ServerFailed(f"{endpoint} answered {answered} predictions for {count} images")
    return predictions
