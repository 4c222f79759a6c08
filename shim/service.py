"""The one front-neutral service under every front: what a front needs from TorchServe, and nothing of HTTP or gRPC.

A front parses its URL or message, checks the body's outer shape, and calls the service: which
model and version a request names, whether it can serve, its status and description, and the
prediction itself (one upstream request, so every front's requests share TorchServe's dynamic
batches). The service raises `ServiceError`s; each front maps them onto its own answers in one
place. It also counts every front's requests in the metrics, with label values only ever taken
from models TorchServe really serves.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastai_serving import defaults
from fastai_serving.bodies import Body, check_answerable
from fastai_serving.errors import ServingError
from fastai_serving_shim import metrics
from fastai_serving_shim.errors import Failure, ServiceError, failure_of_status, service_error
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.status import metadata_body, resolve_version
from fastai_serving_shim.torchserve import JSON, TorchServeClient, UpstreamAnswer, has_ready_worker, upstream_failure

Value = TypeVar("Value")


class Expiring:
    """A thread-safe cache whose entries go stale `ttl_s` seconds after they were loaded."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], Value], fresh: bool = False) -> Value:
        """The cached value of `key`, or `load()` when there is none, it is stale, or `fresh` is asked for."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and not fresh and now - entry[0] < self.ttl_s:
            return entry[1]
        value = load()
        with self._lock:
            self._entries[key] = (now, value)
        return value


@dataclass(frozen=True)
class Readiness:
    """The server's readiness: every model it waits for has a ready worker, and it is not shutting down."""

    ready: bool
    draining: bool
    models: dict[str, bool]
    error: str = ""  # why readiness could not be asked (TorchServe unreachable), when it could not


class Service:
    """What every front shares: the settings, the TorchServe client, and what is known or cached from it."""

    def __init__(self, settings: Settings, client: TorchServeClient | None = None) -> None:
        self.settings = settings
        self.client = client or TorchServeClient(settings.upstream, settings.management, settings)
        self._routing = Expiring(defaults.ROUTING_CACHE_S)
        self._described = Expiring(defaults.METADATA_CACHE_S)
        self._lock = threading.Lock()
        self._served: set[str] = set()  # models TorchServe confirmed: the only model names a metric label takes
        self._tasks: dict[tuple[str, str | None], str] = {}  # (model, TorchServe version or None) -> task

    # --- The model table ------------------------------------------------------------------------

    def models(self) -> list[str]:
        models = self.client.models()
        self._confirm(*models)
        return models

    def default_model(self) -> str:
        """The model behind /analyze and a gRPC ModelSpec without a name: the configured one, else the only one."""
        if self.settings.default_model:
            return self.settings.default_model
        models = self._routing.get("models", self.models)
        if len(models) == 1:
            return models[0]
        raise ServiceError(
            Failure.NOT_FOUND,
            f"no default model: TorchServe serves {len(models)} models; set FASTAI_SERVING_DEFAULT_MODEL "
            "(scripts/serve --default-model) or name the model",
        )

    def predict_version(self, model: str, url_version: str | None) -> str | None:
        """The TorchServe version a request's version number names (None: the default), from the routing cache."""
        if url_version is None:
            return None
        try:
            return resolve_version(url_version, self._cached_versions(model), model)
        except ServiceError as error:
            if error.failure is not Failure.NOT_FOUND:
                raise
        return resolve_version(url_version, self._cached_versions(model, fresh=True), model)

    def version_descriptions(self, model: str, url_version: str | None) -> list[dict[str, Any]]:
        """TorchServe's description of every version of `model`, or of the one a version number names (asked live)."""
        descriptions = self._versions(model)
        if url_version is None:
            return descriptions
        wanted = resolve_version(url_version, descriptions, model)
        return [d for d in descriptions if str(d.get("modelVersion")) == wanted]

    def model_ready(self, model: str, url_version: str | None) -> bool:
        return any(has_ready_worker(description) for description in self.version_descriptions(model, url_version))

    def described_version(self, model: str, url_version: str | None) -> tuple[str, dict[str, Any]]:
        """(TorchServe version, the handler's description) of the default version, or the one a number names."""
        if url_version is None:
            default = self._guard(lambda: self.client.versions(model, version=None))  # the default version alone
            version = str(default[0].get("modelVersion", "")) if default else ""
        else:
            version = resolve_version(url_version, self._versions(model), model)
        return version, self.described(model, version)

    def metadata(self, model: str, url_version: str | None) -> dict[str, Any]:
        """TF Serving's metadata body of a model's default version (asked live), or of the version a number names."""
        version, described = self.described_version(model, url_version)
        return metadata_body(model, version, described)

    def described(self, model: str, version: str) -> dict[str, Any]:
        """The handler's description of a model version, cached: asking goes through a worker."""
        return self._described.get((model, version), lambda: self._guard(lambda: self.client.described(model, version)))

    # --- Readiness ------------------------------------------------------------------------------

    def draining(self) -> bool:
        """Whether the server is shutting down (scripts/serve got SIGTERM): readiness fails, requests are still served."""
        return bool(self.settings.drain_file) and os.path.exists(self.settings.drain_file)

    def models_ready(self) -> dict[str, bool]:
        """Each model the server's readiness waits for, and whether it has a ready worker (asked live)."""
        wanted = self.settings.ready_model_names() or self.models()
        ready = {}
        for model in wanted:
            try:
                ready[model] = any(has_ready_worker(version) for version in self._versions(model))
            except ServiceError as error:
                if error.failure is not Failure.NOT_FOUND:
                    raise
                ready[model] = False  # not registered (yet, or its archive failed to load)
        return ready

    def readiness(self) -> Readiness:
        """Ready when not draining and every model it waits for has a ready worker; TorchServe down is not ready."""
        if self.draining():
            return Readiness(False, True, {})
        try:
            models = self.models_ready()
        except ServiceError as error:
            return Readiness(False, False, {}, error.message)
        return Readiness(bool(models) and all(models.values()), False, models)

    # --- Predictions ----------------------------------------------------------------------------

    def check_answerable(self, model: str, version: str | None, body: Body) -> None:
        """Refuse before inference what the model's task cannot answer, once the task is known from an answer."""
        task = self.task(model, version)
        if task:
            try:
                check_answerable(task, body)
            except ServingError as error:
                raise service_error(error) from None

    def task(self, model: str, version: str | None) -> str:
        """The task of a model version (None: the default version), as its last answer named it; "" before one."""
        with self._lock:
            return self._tasks.get((model, version), "")

    def predict(
        self,
        model: str,
        version: str | None,
        body: bytes,
        verb: str,
        content_type: str = JSON,
        timeout_s: float | None = None,
    ) -> UpstreamAnswer:
        """One upstream request to a TorchServe version (None: the default) within the caller's deadline.

        Returns a 200 or the handler's own {"error"} answer; raises a ServiceError for TorchServe's errors.
        """
        limit = self.settings.predict_timeout_s
        timeout_s = limit if timeout_s is None else max(0.01, min(timeout_s, limit))
        try:
            answer = self.client.predict(model, version, body, verb, content_type, timeout_s)
        except ServiceError as error:
            metrics.UPSTREAM_ERRORS.labels(self.label_of(model), error.failure.value).inc()
            raise
        failure = upstream_failure(answer, model)
        if failure is not None:
            if failure.failure is Failure.UNAVAILABLE:
                metrics.UPSTREAM_ERRORS.labels(self.label_of(model), "unavailable").inc()
            raise failure
        self._confirm(model)
        if answer.retried:
            metrics.UPSTREAM_RETRIES.labels(model).inc()
        if answer.task:
            with self._lock:
                self._tasks[(model, version)] = answer.task
        return answer

    def handler_answers(self, model: str, answer: UpstreamAnswer, front: str) -> dict[str, Any]:
        """The handler's JSON answer to a front that reads it (gRPC, v2); the handler's own error raised as such.

        An archive whose handler names no version is older than these fronts' upstream bodies: refused, saying so.
        """
        if not answer.model_version:  # the handler names its version on every answer, its errors too
            raise ServiceError(
                Failure.OUTDATED_ARCHIVE,
                f"the archive of model {model!r} was made by an older fastai-serving, whose handler cannot read "
                f"the {front}'s requests: rebuild it with scripts/make-archive",
            )
        answers = json.loads(answer.body)
        if answer.status != 200:  # the handler's own error, naming the instance, as REST answers it
            raise ServiceError(failure_of_status(answer.status), str(answers.get("error", "")))
        return answers

    # --- Metrics --------------------------------------------------------------------------------

    def label_of(self, model: str) -> str:
        """`model` as a metric label: only a model TorchServe confirmed serving; any other name is ""."""
        with self._lock:
            return model if model in self._served else ""

    def count(self, front: str, protocol: str, route: str, verb: str, model: str, status: str, seconds: float) -> None:
        """One answered request of any front, in the request metrics."""
        labels = {"front": front, "protocol": protocol, "model": self.label_of(model), "route": route, "verb": verb}
        metrics.REQUESTS.labels(**labels, status=status).inc()
        metrics.LATENCY.labels(**labels).observe(seconds)

    def count_instances(self, model: str, verb: str, instances: int) -> None:
        metrics.INSTANCES.labels(self.label_of(model), verb).observe(instances)

    # --- Inside ---------------------------------------------------------------------------------

    def _versions(self, model: str) -> list[dict[str, Any]]:
        descriptions = self._guard(lambda: self.client.versions(model))
        self._confirm(model)
        return descriptions

    def _cached_versions(self, model: str, fresh: bool = False) -> list[dict[str, Any]]:
        return self._routing.get(("versions", model), lambda: self._versions(model), fresh=fresh)

    def _confirm(self, *models: str) -> None:
        with self._lock:
            self._served.update(models)

    @staticmethod
    def _guard(call: Callable[[], Value]) -> Value:
        """A call of the client, whose core errors (a fake's, an older client's) come out as ServiceErrors."""
        try:
            return call()
        except ServingError as error:
            raise service_error(error) from None
