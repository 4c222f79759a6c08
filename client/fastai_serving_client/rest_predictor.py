"""`RestPredictor`: POST TF Serving's REST row form to any TF-Serving endpoint (the default protocol)."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any
from urllib.parse import quote

import requests

from . import defaults
from .concurrency import UNOBSERVED, Observer
from .credentials import NO_CREDENTIALS, Credentials
from .predictor import InputRejected, ServerFailed, classes_in, predictions_tried
from .retry import DEFAULT_BACKOFF, Backoff, Refused, Retryable, retry_after_s

REFUSED = 429  # the server's admission control: full for now, come back after Retry-After
TRANSIENT_STATUSES = (502, 503, 504)
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
        credentials: Credentials = NO_CREDENTIALS,
        observer: Observer = UNOBSERVED,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(
                f"--server must be an http(s) URL such as http://127.0.0.1:8501, not {server!r} "
                "(for a gRPC address, host:port, add --protocol grpc)"
            )
        base = server.rstrip("/")
        self.model_url = f"{base}/v1/models/{quote(model, safe='')}" if model else f"{base}/analyze"
        self.endpoint = f"{self.model_url}:predict"
        self.stopping, self.backoff, self.timeout_s, self.observer = stopping, backoff, timeout_s, observer
        # No deadline header (X-Request-Timeout): a batch client gains nothing from a place deep in the server's
        # queue; without one, fastai-serving keeps its queue short and refuses the rest, and its refusals are what
        # the concurrency follows. --timeout bounds each request here, on the client's side.
        self.headers = {"Content-Type": "application/json"}
        self.credentials = credentials
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            if self.credentials.token:
                session.headers["Authorization"] = self.credentials.authorization()
            self._local.session = session
        return self._local.session

    def _tls(self) -> dict:
        """verify= and cert= for each request: a session's own verify loses to REQUESTS_CA_BUNDLE (requests#3829)."""
        tls = {}
        if self.credentials.ca is not None:
            tls["verify"] = str(self.credentials.ca)
        if self.credentials.cert is not None:
            tls["cert"] = (str(self.credentials.cert), str(self.credentials.key))
        return tls

    def predict(self, images: list[bytes]) -> list[Any]:
        body = request_body(images)
        return predictions_tried(
            lambda: self._post(body), len(images), self.endpoint, self.backoff, self.stopping, self.observer
        )

    def _post(self, body: bytes) -> Any:
        try:
            response = self._session().post(
                self.endpoint, data=body, headers=self.headers, timeout=self.timeout_s, **self._tls()
            )
        except requests.RequestException as error:
            raise Retryable(f"{type(error).__name__}: {error}") from error
        status = response.status_code
        if status == 200:
            try:
                return response.json()["predictions"]
            except (ValueError, KeyError, TypeError) as error:
                raise ServerFailed(f"{self.endpoint} answered 200 without TF Serving's predictions") from error
        if status == REFUSED:
            raise Refused(f"HTTP {status}: {error_text(response)}", retry_after_s(response.headers.get("Retry-After")))
        if status in TRANSIENT_STATUSES:
            raise Retryable(
                f"HTTP {status}: {error_text(response)}", retry_after_s(response.headers.get("Retry-After"))
            )
        if status in INPUT_STATUSES:
            raise InputRejected(status, f"the server answered {status}: {error_text(response)}")
        raise ServerFailed(f"{self.endpoint} answered {status}: {error_text(response)}")

    def description(self) -> dict | None:
        """fastai-serving's description of the model (`metadata.fastai`: task, classes, inputs); None from other servers."""
        try:
            response = self._session().get(
                f"{self.model_url}/metadata", timeout=defaults.METADATA_TIMEOUT_S, **self._tls()
            )
            described = response.json()["metadata"]["fastai"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        return described if isinstance(described, dict) else None

    def class_names(self) -> list[str] | None:
        """The classes from fastai-serving's metadata (`metadata.fastai.classes`); None from other servers."""
        return classes_in(self.description())
