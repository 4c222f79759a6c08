"""TorchServe's inference, management and metrics APIs: the one module that knows them.

The service (under every front), `serve`, `reload` and the test harness talk to TorchServe through
these classes (inference over upstream_http.py's kept-alive connections, the rest over urllib3's
pools; both thread-safe, unlike a shared `requests.Session`), and get typed values back: a model
version with its number and whether it is ready, the handler's answer, the handler's description. What TorchServe's answers mean (its statuses, "Worker died", a worker that
is READY, its JSON) is decided here and nowhere else; its failures come out as `ServingError`s.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

from fastai_serving import defaults, tracing
from fastai_serving.contract.errors import Failure, NotFound, ServingError
from fastai_serving.contract.upstream import (
    BATCH_INSTANCES_HEADER,
    BATCH_SECONDS_HEADER,
    DEADLINE_HEADER,
    FAILURE_HEADER,
    FORWARD_INSTANCES_HEADER,
    QUEUE_SECONDS_HEADER,
    REQUEST_ID_HEADER,
    SENT_AT_HEADER,
    TASK_HEADER,
    VERB_HEADER,
    VERSION_HEADER,
    failure_of,
)
from fastai_serving_shim.upstream_http import ConnectionPool, Reply, UpstreamTimeout, UpstreamUnreachable

JSON = "application/json"
READY = "READY"  # a worker that can take requests (TorchServe's /ping says Healthy before any is)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as the rest of the code reads it."""

    version: str  # TorchServe's version: "1.0"
    ready: bool  # it has a READY worker
    archive: str = ""  # its archive's file name in the model store
    workers: int = 0  # its READY workers

    @property
    def number(self) -> str:
        """TF Serving's integer version: "1" for TorchServe's "1.0" (a version that is not N or N.0 stays as it is)."""
        match = re.fullmatch(r"([0-9]+)(?:\.0+)?", self.version)
        return match.group(1) if match else self.version


@dataclass(frozen=True)
class Answer:
    """The handler's answer to one inference request: its JSON, the version that answered and its task."""

    body: bytes
    version: str  # the TorchServe version that answered ("": a handler older than this front)
    task: str = ""
    retried: bool = False  # sent again after its worker died and a worker was ready again
    batch_seconds: float = 0.0  # how long the handler took for the batch that answered (0: not said)
    batch_instances: int = 0  # how many instances that batch predicted
    forward_instances: int = 0  # how many instances the handler puts in one forward pass
    queue_seconds: float | None = None  # how long it waited from its sending to its batch's start (None: not said)


class HandlerError(ServingError):
    """The handler's own answer to a failed request (naming the instance), and the version that answered it
    ("": a handler older than this front, which names none)."""

    def __init__(self, message: str, failure: Failure, version: str) -> None:
        super().__init__(message, failure)
        self.version = version


class Upstream(Protocol):
    """What the service needs of TorchServe (TorchServe below; the tests' stand-in implements the same)."""

    def models(self) -> list[str]: ...
    def versions(self, model: str) -> list[ModelVersion]: ...
    def default_version(self, model: str) -> ModelVersion: ...
    def describe(self, model: str, version: str) -> dict[str, Any]: ...
    def infer(
        self,
        model: str,
        version: str | None,
        body: bytes,
        content_type: str,
        verb: str,
        timeout_s: float,
        deadline: float | None = None,
        request_id: str = "",
    ) -> Answer: ...
    def metrics(self) -> bytes | None: ...


def model_path(model: str, version: str | None = None) -> str:
    """`/<model>[/<version>]` with each segment escaped: no name or version can climb out of its route."""
    return "/" + quote(model, safe="") + (f"/{quote(version, safe='')}" if version else "")


def connection_pool(size: int) -> urllib3.PoolManager:
    """A pool of keep-alive connections; `size` per host, and never more (callers wait for a free one)."""
    return urllib3.PoolManager(num_pools=4, maxsize=size, block=True, retries=False)


def _model_version(description: dict[str, Any]) -> ModelVersion:
    ready = sum(worker.get("status") == READY for worker in description.get("workers", []))
    return ModelVersion(
        version=str(description.get("modelVersion", "")),
        ready=ready > 0,
        archive=str(description.get("modelUrl", "")),
        workers=ready,
    )


class Management:
    """TorchServe's management API (loopback only): models, versions, workers, registration."""

    def __init__(self, url: str, timeout_s: float = defaults.STATUS_TIMEOUT_S, pool=None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.pool = pool or connection_pool(4)

    def call(
        self, method: str, path: str, timeout_s: float | None = None, model: str | None = None, **params: Any
    ) -> Any:
        """One call; its JSON answer. 404 is NOT_FOUND (naming `model`), anything else not 200/202 UNAVAILABLE."""
        query = f"?{urlencode(params)}" if params else ""
        timeout = timeout_s or self.timeout_s
        try:
            response = self.pool.request(
                method,
                f"{self.url}{path}{query}",
                timeout=urllib3.Timeout(connect=min(defaults.CONNECT_TIMEOUT_S, timeout), read=timeout),
            )
        except NewConnectionError:  # before TimeoutError: urllib3 makes it a kind of connect timeout
            raise ServingError("TorchServe is unreachable; retry later", Failure.UNAVAILABLE) from None
        except TimeoutError:
            raise ServingError("TorchServe's management API did not answer in time", Failure.UNAVAILABLE) from None
        except HTTPError:
            raise ServingError("TorchServe is unreachable; retry later", Failure.UNAVAILABLE) from None
        if response.status == 404:
            raise NotFound(f"model {model!r} not found" if model else _message(response.data))
        if response.status not in (200, 202):
            raise ServingError(
                f"TorchServe's management API answered {response.status}: {_message(response.data)}",
                Failure.UNAVAILABLE,
            )
        return json.loads(response.data) if response.data else {}

    # --- what is served -----------------------------------------------------------------------

    def models(self) -> list[str]:
        return [entry["modelName"] for entry in self.call("GET", "/models").get("models", [])]

    def versions(self, model: str) -> list[ModelVersion]:
        """Every registered version of `model`."""
        return [_model_version(d) for d in self.call("GET", f"/models{model_path(model, 'all')}", model=model)]

    def default_version(self, model: str) -> ModelVersion:
        """The version `model`'s requests go to when they name none."""
        return _model_version(self.call("GET", f"/models{model_path(model)}", model=model)[0])

    def describe(self, model: str, version: str | None, timeout_s: float | None = None) -> dict[str, Any]:
        """The handler's own description of a model version (task, classes, inputs); asking goes through a worker."""
        entries = self.call(
            "GET", f"/models{model_path(model, version)}", timeout_s=timeout_s, model=model, customized="true"
        )
        metadata = entries[0].get("customizedMetadata", {}) if entries else {}
        return json.loads(metadata) if isinstance(metadata, str) else metadata

    def ready(self, model: str, version: str | None = None) -> bool:
        """Whether `model` (or one version of it) has a READY worker; False when it is not registered."""
        try:
            return any(v.ready for v in self.versions(model) if version is None or v.version == version)
        except NotFound:
            return False

    def models_ready(self, models: list[str] | None = None) -> dict[str, bool]:
        """Each of `models` (default: every registered model) and whether it has a READY worker."""
        return {model: self.ready(model) for model in (self.models() if models is None else models)}

    # --- changing what is served (scripts/reload, tests) --------------------------------------

    def register(self, archive: str, timeout_s: float = defaults.REGISTER_TIMEOUT_S, **params: Any) -> None:
        """Register an archive of the model store (by file name); its model config brings its workers."""
        self.call("POST", "/models", timeout_s=timeout_s, url=archive, **params)

    def set_default(self, model: str, version: str) -> None:
        self.call("PUT", f"/models{model_path(model, version)}/set-default", model=model)

    def unregister(self, model: str, version: str, timeout_s: float = defaults.UNREGISTER_TIMEOUT_S) -> None:
        self.call("DELETE", f"/models{model_path(model, version)}", timeout_s=timeout_s, model=model)

    def scale(self, model: str, workers: int, timeout_s: float = defaults.UNREGISTER_TIMEOUT_S) -> None:
        """Scale `model` to exactly `workers` workers and wait until TorchServe has."""
        self.call(
            "PUT",
            f"/models{model_path(model)}",
            timeout_s=timeout_s,
            model=model,
            min_worker=workers,
            max_worker=workers,
            synchronous="true",
        )


class TorchServe:
    """TorchServe as the service needs it: inference (one retry after a worker death), the model table, metrics.

    Inference goes over the lean client of upstream_http.py (the hot path: every prediction); the
    management and metrics calls over urllib3.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        connections = max(16, settings.threads * 2, settings.grpc_threads)
        self.pool = connection_pool(connections)
        inference = urlsplit(settings.upstream)
        if inference.scheme != "http" or not inference.hostname:
            raise ValueError(f"TorchServe's inference API must be an http:// URL (loopback), not {settings.upstream!r}")
        self.inference = ConnectionPool(
            inference.hostname, inference.port or 80, connections, defaults.CONNECT_TIMEOUT_S
        )
        self.inference_path = inference.path.rstrip("/")
        self.management = Management(settings.management, settings.status_timeout_s, self.pool)

    def models(self) -> list[str]:
        return self.management.models()

    def versions(self, model: str) -> list[ModelVersion]:
        return self.management.versions(model)

    def default_version(self, model: str) -> ModelVersion:
        return self.management.default_version(model)

    def describe(self, model: str, version: str) -> dict[str, Any]:
        return self.management.describe(model, version or None, timeout_s=self.settings.predict_timeout_s)

    def infer(
        self,
        model: str,
        version: str | None,
        body: bytes,
        content_type: str,
        verb: str,
        timeout_s: float,
        deadline: float | None = None,
        request_id: str = "",
    ) -> Answer:
        """One inference request; after a worker death, one retry once a worker is ready again, within `timeout_s`.

        `deadline` (seconds since the epoch): the client's, for the handler, which skips a request past it.
        `request_id`: the request's id, for the handler's log lines about it.
        The handler's answer, or a `ServingError`: the handler's own (naming the instance) or TorchServe's.
        """
        give_up = time.monotonic() + timeout_s
        hop = {VERB_HEADER: verb, **({DEADLINE_HEADER: f"{deadline:.3f}"} if deadline is not None else {})}
        if request_id:
            hop[REQUEST_ID_HEADER] = request_id
        tracing.inject(hop)  # the current span (the service's call) as the handler's spans' parent
        response = self._post(model, version, body, content_type, hop, timeout_s)
        retried = False
        if _worker_died(response) and self._wait_for_ready_worker(model, version, give_up):
            response = self._post(model, version, body, content_type, hop, max(0.01, give_up - time.monotonic()))
            retried = True
        headers = response.headers
        answered_by = headers.get(VERSION_HEADER, "")
        if response.status != 200:
            raise _failure(response, model, answered_by)
        return Answer(
            response.data,
            answered_by,
            headers.get(TASK_HEADER, ""),
            retried,
            _number(headers.get(BATCH_SECONDS_HEADER), float),
            _number(headers.get(BATCH_INSTANCES_HEADER), int),
            _number(headers.get(FORWARD_INSTANCES_HEADER), int),
            _number(headers.get(QUEUE_SECONDS_HEADER), float) if QUEUE_SECONDS_HEADER in headers else None,
        )

    def metrics(self) -> bytes | None:
        """TorchServe's own metrics in Prometheus' text format (queue time, inference latency, ...); None when
        they cannot be read now."""
        try:
            response = self.pool.request(
                "GET", self.settings.torchserve_metrics, timeout=defaults.METRICS_SCRAPE_TIMEOUT_S
            )
        except HTTPError:
            return None
        return response.data if response.status == 200 else None

    def _post(
        self, model: str, version: str | None, body: bytes, content_type: str, hop: dict[str, str], timeout_s: float
    ) -> Reply:
        """One POST, with the hop's headers and the moment it was sent (the queue's wait counts from it)."""
        headers = {"Content-Type": content_type, **hop, SENT_AT_HEADER: f"{time.time():.3f}"}
        path = f"{self.inference_path}/predictions{model_path(model, version)}"
        try:
            return self.inference.post(path, body, headers, timeout_s)
        except UpstreamUnreachable:
            raise ServingError("TorchServe is unreachable; retry later", Failure.UNAVAILABLE) from None
        except UpstreamTimeout:
            raise ServingError(f"model {model!r} did not answer within {timeout_s:g} s", Failure.TIMEOUT) from None

    def _wait_for_ready_worker(self, model: str, version: str | None, deadline: float) -> bool:
        give_up = min(deadline, time.monotonic() + self.settings.retry_s)
        while time.monotonic() < give_up:
            try:
                if self.management.ready(model, version or None):
                    return True
            except ServingError:
                pass
            time.sleep(0.5)
        return False


def _worker_died(response: Reply) -> bool:
    """TorchServe answers the requests of a batch whose worker died with 503/507 'Worker died.'"""
    return response.status in (503, 507) and b"Worker died" in response.data


def _failure(response: Reply, model: str, answered_by: str) -> ServingError:
    """A failed answer as a `ServingError`: the handler's own (naming the instance), or TorchServe's.

    Of TorchServe's own statuses, a 4xx is the client's and keeps its message; a 5xx other than a
    timeout means the model cannot serve now (retry).
    """
    document = _json(response.data)
    if answered_by or (isinstance(document, dict) and "error" in document):  # the handler wrote it
        message = str(document.get("error", "")) if isinstance(document, dict) else _message(response.data)
        return HandlerError(message, failure_of(response.headers.get(FAILURE_HEADER), response.status), answered_by)
    message = str(document.get("message", "")) if isinstance(document, dict) else ""
    status = response.status
    if status == 404:
        found = "Model not found" in message or not message
        return NotFound(f"model {model!r} not found" if found else f"model {model!r}: {message}")
    if status == 413:
        return ServingError("request body over TorchServe's size limit", Failure.TOO_LARGE)
    if status in (408, 504):
        return ServingError(f"model {model!r} did not answer in time", Failure.TIMEOUT)
    if 400 <= status < 500:
        return ServingError(f"TorchServe refused the request to model {model!r}: {message or status}", Failure.REFUSED)
    if "Worker died" in message:
        return ServingError(f"the worker serving {model!r} died and was not back in time; retry", Failure.UNAVAILABLE)
    return ServingError(f"model {model!r} cannot serve right now ({status}); retry later", Failure.UNAVAILABLE)


def _number(text: str | None, kind: type) -> Any:
    try:
        return kind(text) if text else kind(0)
    except ValueError:
        return kind(0)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _message(body: bytes) -> str:
    document = _json(body)
    if isinstance(document, dict) and "message" in document:
        return str(document["message"])
    return body.decode(errors="replace")[:200]
