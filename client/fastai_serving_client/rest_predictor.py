"""`RestPredictor`: POST TF Serving's REST row form to any TF-Serving endpoint (the default protocol)."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any
from urllib.parse import quote

import requests

from . import defaults
from .predictor import InputRejected, ServerFailed, predictions_tried
from .retry import DEFAULT_BACKOFF, Backoff, Retryable, retry_after_s

TRANSIENT_STATUSES = (429, 502, 503, 504)
INPUT_STATUSES = (400, 413, 422, 500)


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
            response = self._session().get(f"{self.model_url}/metadata", timeout=defaults.METADATA_TIMEOUT_S)
            classes = response.json()["metadata"]["fastai"]["classes"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        return [str(name) for name in classes] if isinstance(classes, list) and classes else None
