"""The REST front's application factory: create_app(settings) builds it over the service; nothing is made at import."""

from __future__ import annotations

import time

from flask import Flask, Response, g

from fastai_serving_shim import metrics
from fastai_serving_shim.rest_errors import register_error_handlers
from fastai_serving_shim.routes import api
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import TorchServeClient

FRONT = "rest"
UNMATCHED = {"protocol": "", "route": "unmatched", "verb": "", "model": ""}


def create_app(settings: Settings | None = None, client: TorchServeClient | None = None) -> Flask:
    """The REST front for `settings` (default: from the environment); `client` replaces TorchServe's in tests."""
    settings = settings or Settings.from_env()
    app = Flask("fastai_serving_shim")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["fastai_serving"] = Service(settings, client)
    app.register_blueprint(api)
    register_error_handlers(app)
    _count_requests(app)
    return app


def _count_requests(app: Flask) -> None:
    """Every request's count, time and status in the metrics; while draining, no connection is kept alive."""
    service: Service = app.extensions["fastai_serving"]

    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()
        g.metric = dict(UNMATCHED)
        metrics.IN_FLIGHT.inc()

    @app.after_request
    def answered(response: Response) -> Response:
        labels = g.get("metric", UNMATCHED)
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        service.count(FRONT, labels["protocol"], labels["route"], labels["verb"], labels["model"],
                      str(response.status_code), seconds)  # fmt: skip
        if service.draining():
            response.headers["Connection"] = "close"  # so no idle connection is cut when the front stops
        return response

    @app.teardown_request
    def finished(_error: BaseException | None) -> None:
        if "started" in g:
            metrics.IN_FLIGHT.dec()
