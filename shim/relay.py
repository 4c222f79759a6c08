"""TorchServe's answer to a prediction, as the shim's answer: bodies passed through, errors mapped (REST and gRPC)."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from fastai_serving_shim import metrics
from fastai_serving_shim.errors import ShimError
from fastai_serving_shim.upstream import UpstreamAnswer

JSON = "application/json"


def relay(answer: UpstreamAnswer, model: str) -> Response:
    """200s and the handler's own {"error"} answers pass through as they are; TorchServe's own errors are mapped."""
    error = upstream_error(answer, model)
    if error is not None:
        raise error
    return Response(answer.body, status=answer.status, mimetype=JSON)


def upstream_error(answer: UpstreamAnswer, model: str) -> ShimError | None:
    """None for an answer the front passes on (a 200, or the handler's own {"error"}); else TorchServe's error, mapped.

    The handler answers 400 (bad input) and 500 (the model failed on that input) itself. Of
    TorchServe's own statuses, a 4xx is the client's and keeps its status and message; a 5xx
    other than a timeout means the model cannot serve now (503, retry).
    """
    if answer.status == 200:
        return None
    document = _json(answer.body)
    if isinstance(document, dict) and "error" in document:
        return None
    message = str(document.get("message", "")) if isinstance(document, dict) else ""
    if answer.status == 404:
        return ShimError(404, f"model {model!r} not found" if "Model not found" in message or not message
                         else f"model {model!r}: {message}")  # fmt: skip
    if answer.status == 413:
        return ShimError(413, "request body over TorchServe's size limit")
    if answer.status in (408, 504):
        return ShimError(504, f"model {model!r} did not answer in time")
    if 400 <= answer.status < 500:
        return ShimError(
            answer.status, f"TorchServe refused the request to model {model!r}: {message or answer.status}"
        )
    metrics.UPSTREAM_ERRORS.labels(model, "unavailable").inc()
    if "Worker died" in message:
        return ShimError(503, f"the worker serving {model!r} died and was not back in time; retry")
    return ShimError(503, f"model {model!r} cannot serve right now ({answer.status}); retry later")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
