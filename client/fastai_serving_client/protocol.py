"""Sending images to a TF-Serving endpoint: one small interface, `Predictor`, and its two forms.

`RestPredictor` (here) POSTs TF Serving's REST row form; `GrpcPredictor` (grpc_predictor.py, imported
only for `--protocol grpc`) calls TF Serving's PredictionService/Predict. Both answer the same
predictions for the same images; the runner needs nothing else.
What a predictor raises tells the runner what to do:
- `InputRejected`: the server refused this request's input (REST: 400, 413, 422, or 500: the model
  failed on it; gRPC: INVALID_ARGUMENT, OUT_OF_RANGE, INTERNAL, or RESOURCE_EXHAUSTED for a message
  over a size limit). The runner sends a multi-image batch again one image at a time to find the
  bad one(s); a single image refused is recorded as failed with the server's message.
- `ServerFailed`: the server cannot serve at all (unknown model, refused credentials, still
  unavailable after every retry, an answer that is not TF Serving's; gRPC: NOT_FOUND, UNIMPLEMENTED,
  UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION and the rest): the run stops, keeping what it committed.
- Transient failures are retried with backoff inside `predict`: REST's 503, 504, 429, 502 and dropped
  connections, obeying Retry-After; gRPC's UNAVAILABLE (unreachable, too), DEADLINE_EXCEEDED, ABORTED,
  CANCELLED and RESOURCE_EXHAUSTED (busy), obeying a `retry-after` in the trailing metadata.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import requests

from . import defaults
from .retry import DEFAULT_BACKOFF, Backoff, GaveUp, Retryable, retry_after_s, with_retries

PROTOCOLS = ("rest", "grpc")
TRANSIENT_STATUSES = (429, 502, 503, 504)
INPUT_STATUSES = (400, 413, 422, 500)


class InputRejected(Exception):
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


def make_predictor(
    protocol: str,
    server: str,
    model: str | None,
    stopping: threading.Event,
    backoff: Backoff = DEFAULT_BACKOFF,
    timeout_s: float = defaults.TIMEOUT_S,
) -> Predictor:
    if protocol == "rest":
        return RestPredictor(server, model, stopping, backoff, timeout_s)
    if protocol == "grpc":
        try:  # only here: the REST client needs neither grpcio nor protobuf
            from .grpc_predictor import GrpcPredictor
        except ImportError as error:
            raise ValueError(
                f"--protocol grpc needs grpcio and protobuf ({error}): pip install 'fastai-serving-client[grpc]' "
                "(from a checkout: pip install './client[grpc]'), or use --protocol rest"
            ) from error
        return GrpcPredictor(server, model, stopping, backoff, timeout_s)
    raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")


def predictions_tried(
    send: Callable[[], Any], count: int, endpoint: str, backoff: Backoff, stopping: threading.Event
) -> list[Any]:
    """`send()`'s predictions, tried again while it raises `Retryable`: one per image, or ServerFailed saying why not."""
    try:
        predictions = with_retries(send, backoff, stopping)
    except GaveUp as failure:
        raise ServerFailed(f"{endpoint} is unavailable: {failure}") from failure
    if not isinstance(predictions, list) or len(predictions) != count:
        answered = len(predictions) if isinstance(predictions, list) else "no list of"
        raise ServerFailed(f"{endpoint} answered {answered} predictions for {count} images")
    return predictions


def request_body(images: list[bytes]) -> bytes:
    """TF Serving's row form, as chip-n-scale sends it: {"instances": [{"image_bytes": {"b64": ...}}, ...]}."""
    instances = [{"image_bytes": {"b64": base64.b64encode(image).decode("ascii")}} for image in images]
    return json.dumps({"instances": instances}).encode()


def error_text(response: requests.Response) -> str:
    """TF Serving's `{"error": ...}` message, or the start of whatever the server said."""
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text[:300].strip() or (response.reason or "")


class RestPredictor:
    """POST /v1/models/<model>:predict (or /analyze:predict, the default model) on any TF-Serving REST server."""

    def __init__(
        self,
        server: str,
        model: str | None,
        stopping: threading.Event,
        backoff: Backoff = DEFAULT_BACKOFF,
        timeout_s: float = defaults.TIMEOUT_S,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(
                f"--server must be an http(s) URL such as http://127.0.0.1:8501, not {server!r} "
                "(for a gRPC address, host:port, add --protocol grpc)"
            )
        base = server.rstrip("/")
        self.model_url = f"{base}/v1/models/{quote(model, safe='')}" if model else f"{base}/analyze"
        self.endpoint = f"{self.model_url}:predict"
        self.stopping, self.backoff, self.timeout_s = stopping, backoff, timeout_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def predict(self, images: list[bytes]) -> list[Any]:
        body = request_body(images)
        return predictions_tried(lambda: self._post(body), len(images), self.endpoint, self.backoff, self.stopping)

    def _post(self, body: bytes) -> Any:
        try:
            response = self._session().post(
                self.endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=self.timeout_s
            )
        except requests.RequestException as error:
            raise Retryable(f"{type(error).__name__}: {error}") from error
        status = response.status_code
        if status == 200:
            try:
                return response.json()["predictions"]
            except (ValueError, KeyError, TypeError) as error:
                raise ServerFailed(f"{self.endpoint} answered 200 without TF Serving's predictions") from error
        if status in TRANSIENT_STATUSES:
            raise Retryable(
                f"HTTP {status}: {error_text(response)}", retry_after_s(response.headers.get("Retry-After"))
            )
        if status in INPUT_STATUSES:
            raise InputRejected(status, f"the server answered {status}: {error_text(response)}")
        raise ServerFailed(f"{self.endpoint} answered {status}: {error_text(response)}")

    def class_names(self) -> list[str] | None:
        """The classes from fastai-serving's metadata (`metadata.fastai.classes`); None from other servers."""
        try:
            response = self._session().get(f"{self.model_url}/metadata", timeout=30)
            classes = response.json()["metadata"]["fastai"]["classes"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        return [str(name) for name in classes] if isinstance(classes, list) and classes else None
