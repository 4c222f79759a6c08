"""TorchServe's inference and management APIs: the one module that knows them.

The service (under every front), `serve`, `reload` and the test harness all talk to TorchServe
through these classes, over urllib3 connection pools (thread-safe, unlike a shared
`requests.Session`). What TorchServe's answers mean (its statuses, "Worker died", a worker
that is READY) is decided here and nowhere else.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError

from fastai_serving import defaults
from fastai_serving.vocabulary import TASK_HEADER, VERB_HEADER, VERSION_HEADER
from fastai_serving_shim.errors import Failure, ServiceError

JSON = "application/json"
READY = "READY"  # a worker that can take requests (TorchServe's /ping says Healthy before any is)


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    model_version: str = ""  # the TorchServe version that answered, as the handler names it ("": an older handler)
    task: str = ""  # the answering model's task, as the handler names it
    retried: bool = False  # sent again after its worker died and a worker was ready again

    def handler_answered(self) -> bool:
        """Whether our handler wrote this answer (a 200, or its own {"error"}), rather than TorchServe."""
        return bool(self.model_version) or self.status == 200


def model_path(model: str, version: str | None = None) -> str:
    """`/<model>[/<version>]` with each segment escaped: no name or version can climb out of its route."""
    return "/" + quote(model, safe="") + (f"/{quote(version, safe='')}" if version else "")


def has_ready_worker(version_description: dict[str, Any]) -> bool:
    return any(worker.get("status") == READY for worker in version_description.get("workers", []))


def worker_died(answer: UpstreamAnswer) -> bool:
    """TorchServe answers the requests of a batch whose worker died with 503/507 'Worker died.'"""
    return answer.status in (503, 507) and b"Worker died" in answer.body


def host_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 address in brackets and the wildcard addresses as this machine's loopback."""
    if host in ("0.0.0.0", ""):
        host = defaults.LOOPBACK
    elif host in ("::", "[::]"):
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"http://{host}:{port}"


def connection_pool(size: int) -> urllib3.PoolManager:
    """A pool of keep-alive connections; `size` per host, and never more (callers wait for a free one)."""
    return urllib3.PoolManager(num_pools=4, maxsize=size, block=True, retries=False)


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
            raise ServiceError(Failure.UNAVAILABLE, "TorchServe is unreachable; retry later") from None
        except TimeoutError:
            raise ServiceError(Failure.UNAVAILABLE, "TorchServe's management API did not answer in time") from None
        except HTTPError:
            raise ServiceError(Failure.UNAVAILABLE, "TorchServe is unreachable; retry later") from None
        if response.status == 404:
            raise ServiceError(Failure.NOT_FOUND, f"model {model!r} not found" if model else _message(response.data))
        if response.status not in (200, 202):
            raise ServiceError(
                Failure.UNAVAILABLE,
                f"TorchServe's management API answered {response.status}: {_message(response.data)}",
                upstream_status=response.status,
            )
        return json.loads(response.data) if response.data else {}

    # --- what is served -----------------------------------------------------------------------

    def models(self) -> list[str]:
        return [entry["modelName"] for entry in self.call("GET", "/models").get("models", [])]

    def versions(self, model: str, version: str | None = "all") -> list[dict[str, Any]]:
        """TorchServe's description of every version of `model` ("all"), one version, or (None) the default one."""
        return self.call("GET", f"/models{model_path(model, version)}", model=model)

    def default_version(self, model: str) -> str:
        return str(self.versions(model, None)[0]["modelVersion"])

    def described(self, model: str, version: str | None, timeout_s: float | None = None) -> dict[str, Any]:
        """The handler's own description of a model version (task, classes, inputs); asking goes through a worker."""
        entries = self.call(
            "GET", f"/models{model_path(model, version)}", timeout_s=timeout_s, model=model, customized="true"
        )
        metadata = entries[0].get("customizedMetadata", {}) if entries else {}
        return json.loads(metadata) if isinstance(metadata, str) else metadata

    def ready(self, model: str, version: str | None = "all") -> bool:
        """Whether `model` (or one version of it) has a READY worker; False when it is not registered."""
        try:
            return any(has_ready_worker(description) for description in self.versions(model, version))
        except ServiceError as error:
            if error.failure is Failure.NOT_FOUND:
                return False
            raise

    def models_ready(self, models: list[str] | None = None) -> dict[str, bool]:
        """Each of `models` (default: every registered model) and whether it has a READY worker."""
        return {model: self.ready(model) for model in (self.models() if models is None else models)}

    # --- changing what is served (scripts/reload, tests) --------------------------------------

    def register(self, archive: str, timeout_s: float = 60, **params: Any) -> None:
        """Register an archive of the model store (by file name); its model config brings its workers."""
        self.call("POST", "/models", timeout_s=timeout_s, url=archive, **params)

    def set_default(self, model: str, version: str) -> None:
        self.call("PUT", f"/models{model_path(model, version)}/set-default", model=model)

    def unregister(self, model: str, version: str, timeout_s: float = 120) -> None:
        self.call("DELETE", f"/models{model_path(model, version)}", timeout_s=timeout_s, model=model)

    def scale(self, model: str, workers: int, timeout_s: float = 120) -> None:
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


class Inference:
    """TorchServe's inference API: one POST per client request, over pooled keep-alive connections."""

    def __init__(self, url: str, pool: urllib3.PoolManager) -> None:
        self.url = url.rstrip("/")
        self.pool = pool

    def post(
        self, model: str, version: str | None, body: bytes, verb: str, content_type: str, timeout_s: float
    ) -> UpstreamAnswer:
        try:
            response = self.pool.request(
                "POST",
                f"{self.url}/predictions{model_path(model, version)}",
                body=body,
                headers={"Content-Type": content_type, VERB_HEADER: verb},
                timeout=urllib3.Timeout(connect=min(defaults.CONNECT_TIMEOUT_S, timeout_s), read=timeout_s),
            )
        except NewConnectionError:  # before TimeoutError: urllib3 makes it a kind of connect timeout
            raise ServiceError(Failure.UNAVAILABLE, "TorchServe is unreachable; retry later") from None
        except TimeoutError:
            raise ServiceError(Failure.TIMEOUT, f"model {model!r} did not answer within {timeout_s:g} s") from None
        except (ProtocolError, HTTPError):
            raise ServiceError(Failure.UNAVAILABLE, "TorchServe is unreachable; retry later") from None
        headers = response.headers
        return UpstreamAnswer(
            response.status, response.data, headers.get(VERSION_HEADER, ""), headers.get(TASK_HEADER, "")
        )


class TorchServeClient:
    """What the service needs of TorchServe: predictions (one retry after a worker death) and the model table."""

    def __init__(self, upstream: str, management: str, settings: Any) -> None:
        self.settings = settings
        self.pool = connection_pool(max(16, settings.threads * 2, settings.grpc_threads))
        self.inference = Inference(upstream, self.pool)
        self.management = Management(management, settings.status_timeout_s, self.pool)

    def predict(
        self, model: str, version: str | None, body: bytes, verb: str, content_type: str, timeout_s: float
    ) -> UpstreamAnswer:
        """One upstream request; after a worker death, one retry once a worker is ready again, within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        answer = self.inference.post(model, version, body, verb, content_type, timeout_s)
        if worker_died(answer) and self._wait_for_ready_worker(model, version, deadline):
            remaining = max(0.01, deadline - time.monotonic())
            again = self.inference.post(model, version, body, verb, content_type, remaining)
            return UpstreamAnswer(again.status, again.body, again.model_version, again.task, retried=True)
        return answer

    def _wait_for_ready_worker(self, model: str, version: str | None, deadline: float) -> bool:
        give_up = min(deadline, time.monotonic() + self.settings.retry_s)
        while time.monotonic() < give_up:
            try:
                if self.management.ready(model, version or None):
                    return True
            except ServiceError:
                pass
            time.sleep(0.5)
        return False

    def models(self) -> list[str]:
        return self.management.models()

    def versions(self, model: str, version: str | None = "all") -> list[dict[str, Any]]:
        return self.management.versions(model, version)

    def described(self, model: str, version: str | None) -> dict[str, Any]:
        return self.management.described(model, version, timeout_s=self.settings.predict_timeout_s)


def upstream_failure(answer: UpstreamAnswer, model: str) -> ServiceError | None:
    """None for an answer the fronts pass on (a 200, or the handler's own {"error"}); else TorchServe's error.

    The handler answers 400 (bad input) and 500 (the model failed on that input) itself. Of
    TorchServe's own statuses, a 4xx is the client's and keeps its message; a 5xx other than
    a timeout means the model cannot serve now (retry).
    """
    if answer.status == 200:
        return None
    document = _json(answer.body)
    if isinstance(document, dict) and "error" in document:
        return None
    message = str(document.get("message", "")) if isinstance(document, dict) else ""
    if answer.status == 404:
        found = "Model not found" in message or not message
        return ServiceError(Failure.NOT_FOUND, f"model {model!r} not found" if found else f"model {model!r}: {message}")
    if answer.status == 413:
        return ServiceError(Failure.TOO_LARGE, "request body over TorchServe's size limit")
    if answer.status in (408, 504):
        return ServiceError(Failure.TIMEOUT, f"model {model!r} did not answer in time")
    if 400 <= answer.status < 500:
        return ServiceError(
            Failure.REFUSED,
            f"TorchServe refused the request to model {model!r}: {message or answer.status}",
            upstream_status=answer.status,
        )
    if "Worker died" in message:
        return ServiceError(Failure.UNAVAILABLE, f"the worker serving {model!r} died and was not back in time; retry")
    return ServiceError(Failure.UNAVAILABLE, f"model {model!r} cannot serve right now ({answer.status}); retry later")


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
