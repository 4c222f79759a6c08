"""The application factory: create_app(settings) builds the shim; nothing is created at import."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask

from shim.errors import ShimError, register_error_handlers
from shim.routes import api
from shim.settings import Settings
from shim.upstream import TorchServeClient

METADATA_CACHE_S = 60.0


class Shim:
    """What the routes share: the settings, the TorchServe client, and the metadata cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = TorchServeClient(settings)
        self._described: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def default_model(self) -> str:
        """The model behind /analyze: the configured one, else the only one TorchServe serves."""
        if self.settings.default_model:
            return self.settings.default_model
        models = self.client.models()
        if len(models) == 1:
            return models[0]
        raise ShimError(
            404,
            f"no default model: TorchServe serves {len(models)} models; set FASTAI_SERVING_DEFAULT_MODEL "
            "(scripts/serve --default-model) or use /v1/models/<model>",
        )

    def described(self, model: str, version: str) -> dict[str, Any]:
        """The handler's description of a model version, cached: asking goes through a worker."""
        key, now = (model, version), time.monotonic()
        with self._lock:
            cached = self._described.get(key)
        if cached and now - cached[0] < METADATA_CACHE_S:
            return cached[1]
        described = self.client.described(model, version)
        with self._lock:
            self._described[key] = (now, described)
        return described


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("fastai_serving_shim")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["fastai_serving"] = Shim(settings)
    app.register_blueprint(api)
    register_error_handlers(app)
    return app
