"""The one client of TorchServe: inference over a pooled connection, and the management calls."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from fastai_serving.vocabulary import TASK_HEADER, VERB_HEADER, VERSION_HEADER
from fastai_serving_shim import metrics
from fastai_serving_shim.errors import ShimError
from fastai_serving_shim.settings import Settings

CONNECT_TIMEOUT_S = 2.0
JSON = "application/json"


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    model_version: str = ""  # the TorchServe version that answered, as the handler names it ("": an older handler)
    task: str = ""  # the answering model's task, as the handler names it


def model_path(model: str, version: str | None = None) -> str:
    """`/<model>[/<version>]` with each segment escaped: no name or version can climb out of its route."""
    return "/" + quote(model, safe="") + (f"/{quote(version, safe='')}" if version else "")


class TorchServeClient:
    """Talks to TorchServe's inference and management APIs with bounded timeouts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(16, settings.threads * 2, settings.grpc_threads))
        self.session.mount("http://", adapter)

    # --- inference ----------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        version: str | None,
        body: bytes,
        verb: str,
        content_type: str = JSON,
        timeout_s: float | None = None,
    ) -> UpstreamAnswer:
        """One upstream request; after a worker death, one retry once a worker is ready again.

        `timeout_s`: the caller's own deadline (a gRPC client's), when shorter than the predict timeout.
        """
        timeout_s = (
            self.settings.predict_timeout_s if timeout_s is None else min(timeout_s, self.settings.predict_timeout_s)
        )
        deadline = time.monotonic() + timeout_s
        answer = self._post_prediction(model, version, body, verb, content_type, deadline, timeout_s)
        if _worker_died(answer):
            metrics.UPSTREAM_ERRORS.labels(model, "worker_died").inc()
            if self._wait_for_ready_worker(model, version, deadline):
                metrics.UPSTREAM_RETRIES.labels(model).inc()
                answer = self._post_prediction(model, version, body, verb, content_type, deadline, timeout_s)
        return answer

    def _post_prediction(
        self,
        model: str,
        version: str | None,
        body: bytes,
        verb: str,
        content_type: str,
        deadline: float,
        timeout_s: float,
    ) -> UpstreamAnswer:
        url = f"{self.settings.upstream}/predictions{model_path(model, version)}"
        remaining = max(0.01, deadline - time.monotonic())
        try:
            response = self.session.post(
                url,
                data=body,
                headers={"Content-Type": content_type, VERB_HEADER: verb},
                timeout=(min(CONNECT_TIMEOUT_S, remaining), remaining),
            )
        except requests.Timeout:
            metrics.UPSTREAM_ERRORS.labels(model, "timeout").inc()
            raise ShimError(504, f"model {model!r} did not answer within {timeout_s:g} s") from None
        except requests.ConnectionError:
            metrics.UPSTREAM_ERRORS.labels(model, "unreachable").inc()
            raise ShimError(503, "TorchServe is unreachable; retry later") from None
        headers = response.headers
        return UpstreamAnswer(
            response.status_code, response.content, headers.get(VERSION_HEADER, ""), headers.get(TASK_HEADER, "")
        )

    def _wait_for_ready_worker(self, model: str, version: str | None, deadline: float) -> bool:
        give_up = min(deadline, time.monotonic() + self.settings.retry_s)
        while time.monotonic() < give_up:
            try:
                if any(has_ready_worker(v) for v in self.versions(model, version or None)):
                    return True
            except ShimError:
                pass
            time.sleep(0.5)
        return False

    # --- management ---------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [entry["modelName"] for entry in self._management_get("/models").get("models", [])]

    def versions(self, model: str, version: str | None = "all") -> list[dict[str, Any]]:
        """TorchServe's description of every version of `model` ("all"), one version, or (None) the default one."""
        return self._management_get(f"/models{model_path(model, version)}", model=model)

    def described(self, model: str, version: str) -> dict[str, Any]:
        """The handler's own description of the model (task, classes, input kind)."""
        entries = self._management_get(
            f"/models{model_path(model, version)}",
            model=model,
            params={"customized": "true"},
            timeout=self.settings.predict_timeout_s,
        )
        metadata = entries[0].get("customizedMetadata", {}) if entries else {}
        return json.loads(metadata) if isinstance(metadata, str) else metadata

    def _management_get(self, path: str, model: str | None = None, params=None, timeout: float | None = None) -> Any:
        try:
            response = self.session.get(
                f"{self.settings.management}{path}",
                params=params,
                timeout=(CONNECT_TIMEOUT_S, timeout or self.settings.status_timeout_s),
            )
        except requests.Timeout:
            raise ShimError(503, "TorchServe's management API did not answer in time") from None
        except requests.ConnectionError:
            raise ShimError(503, "TorchServe is unreachable; retry later") from None
        if response.status_code == 404:
            raise ShimError(404, f"model {model!r} not found" if model else "not found")
        if response.status_code != 200:
            raise ShimError(503, f"TorchServe's management API answered {response.status_code}")
        return response.json()


def has_ready_worker(version_description: dict[str, Any]) -> bool:
    return any(worker.get("status") == "READY" for worker in version_description.get("workers", []))


def _worker_died(answer: UpstreamAnswer) -> bool:
    """TorchServe answers requests in flight when their worker dies with 507 'Worker died.'"""
    return answer.status in (503, 507) and b"Worker died" in answer.body
