"""The request a front is answering now, as its log lines see it: its id and what the service learns of it.

Each front begins one record per request on the thread (REST) or call (gRPC) that answers it, with the id its
client sent or a new one (contract/request_ids.py); the service fills in the model, version, instances and the
time the request waited in TorchServe's queue, sends the id on to the handler, and writes the access line when
the front counts the answer (access_log.py). A context variable, so no signature between front and TorchServe
carries what only the logs need.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from fastai_serving.contract.request_ids import request_id

REQUEST_ID_HEADER = "X-Request-ID"  # REST: the client's id in, the request's id out, on every answer
REQUEST_ID_METADATA = "x-request-id"  # gRPC: the client's in its metadata, the request's in the trailing metadata


@dataclass
class Observed:
    request_id: str
    front: str
    model: str = ""  # the model that answered, once the service resolved it
    version: str = ""  # its TF Serving version number
    instances: int | None = None  # in a prediction
    queue_s: float | None = None  # how long it waited from the front's sending to its batch's start


_current: contextvars.ContextVar[Observed | None] = contextvars.ContextVar("fastai_serving_request", default=None)


def begin(front: str, presented: str | None) -> Observed:
    """The record of a request a front starts answering: `presented`, the client's id (kept when well formed)."""
    record = Observed(request_id(presented), front)
    _current.set(record)
    return record


def current() -> Observed | None:
    return _current.get()


def end() -> None:
    _current.set(None)
