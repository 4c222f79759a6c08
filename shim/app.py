"""The application factory: create_app(settings) builds the shim; nothing is created at import."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, g

from fastai_serving_shim import metrics
from fastai_serving_shim.errors import ShimError, register_error_handlers
from fastai_serving_shim.routes import api
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.status import metadata_body, resolve_version
from fastai_serving_shim.upstream import TorchServeClient, has_ready_worker
from fastai_serving_shim.v2_routes import v2

# What TorchServe serves changes only on a reload: the prediction path reads it from here
# rather than asking the management API on every request. A name not found asks again at once.
ROUTING_CACHE_S = 10.0
# The handler's description of a model (classes) is read through a worker: asked rarely.
METADATA_CACHE_S = 60.0

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


class Shim:
    """What the routes share: the settings, the TorchServe client, and what is cached from it."""

    def __init__(self, settings: Settings, client: TorchServeClient | None = None) -> None:
        self.settings = settings
        self.client = client or TorchServeClient(settings)
        self._routing = Expiring(ROUTING_CACHE_S)
        self._described = Expiring(METADATA_CACHE_S)

    def default_model(self) -> str:
        """The model behind /analyze: the configured one, else the only one TorchServe serves."""
        if self.settings.default_model:
            return self.settings.default_model
        models = self._routing.get("models", self.client.models)
        if len(models) == 1:
            return models[0]
        raise ShimError(
            404,
            f"no default model: TorchServe serves {len(models)} models; set FASTAI_SERVING_DEFAULT_MODEL "
            "(scripts/serve --default-model) or use /v1/models/<model>",
        )

    def predict_version(self, model: str, url_version: str) -> str:
        """The TorchServe version a prediction's /versions/<n> names, from the routing cache (asked again on a miss)."""
        try:
            return resolve_version(
                url_version, self._routing.get(("versions", model), lambda: self.client.versions(model)), model
            )
        except ShimError as error:
            if error.status != 404:
                raise
        return resolve_version(
            url_version, self._routing.get(("versions", model), lambda: self.client.versions(model), fresh=True), model
        )

    def version_descriptions(self, model: str, url_version: str | None) -> list[dict[str, Any]]:
        """TorchServe's description of every version of `model`, or of the one a URL names (asked live: status)."""
        descriptions = self.client.versions(model)
        if url_version is None:
            return descriptions
        wanted = resolve_version(url_version, descriptions, model)
        return [d for d in descriptions if str(d.get("modelVersion")) == wanted]

    def metadata(self, model: str, url_version: str | None) -> dict[str, Any]:
        """TF Serving's metadata body of a model's default version (asked live), or of the version a URL names."""
        if url_version is None:
            default_version = self.client.versions(model, version=None)  # TorchServe's default version alone
            torchserve_version = str(default_version[0].get("modelVersion", "")) if default_version else ""
        else:
            torchserve_version = resolve_version(url_version, self.client.versions(model), model)
        return metadata_body(model, torchserve_version, self.described(model, torchserve_version))

    def described(self, model: str, version: str) -> dict[str, Any]:
        """The handler's description of a model version, cached: asking goes through a worker."""
        return self._described.get((model, version), lambda: self.client.described(model, version))

    def draining(self) -> bool:
        """Whether the server is shutting down (scripts/serve got SIGTERM): readiness fails, requests are still served."""
        return bool(self.settings.drain_file) and os.path.exists(self.settings.drain_file)

    def models_ready(self) -> dict[str, bool]:
        """Each model the server's readiness waits for, and whether it has a ready worker (asked live)."""
        wanted = self.settings.ready_model_names() or self.client.models()
        ready = {}
        for model in wanted:
            try:
                ready[model] = any(has_ready_worker(version) for version in self.client.versions(model))
            except ShimError as error:
                if error.status != 404:
                    raise
                ready[model] = False  # not registered (yet, or its archive failed to load)
        return ready


def create_app(settings: Settings | None = None, client: TorchServeClient | None = None) -> Flask:
    """The shim for `settings` (default: from the environment); `client` replaces the TorchServe client in tests."""
    settings = settings or Settings.from_env()
    app = Flask("fastai_serving_shim")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["fastai_serving"] = Shim(settings, client)
    app.register_blueprint(api)
    app.register_blueprint(v2)  # the Open Inference Protocol (KServe v2) beside TF Serving's API
    register_error_handlers(app)
    _count_requests(app)
    return app


def _count_requests(app: Flask) -> None:
    """Every request's count, time and status in the metrics; while draining, no connection is kept alive."""

    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()
        g.metric = {"model": "", "route": "unmatched", "verb": ""}
        metrics.IN_FLIGHT.inc()

    @app.after_request
    def answered(response: Response) -> Response:
        labels = g.get("metric", {"model": "", "route": "unmatched", "verb": ""})
        if response.status_code == 404:
            labels = {**labels, "model": ""}  # a name nobody serves never becomes a label value
        metrics.REQUESTS.labels(**labels, status=str(response.status_code)).inc()
        metrics.LATENCY.labels(**labels).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        if app.extensions["fastai_serving"].draining():
            response.headers["Connection"] = "close"  # so no idle connection is cut when the shim stops
        return response

    @app.teardown_request
    def finished(_error: BaseException | None) -> None:
        if "started" in g:
            metrics.IN_FLIGHT.dec()
