"""The REST front's application factory: create_app(settings) builds it over the service; nothing is made at import."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from fastai_serving import tracing
from fastai_serving_shim import metrics, observed
from fastai_serving_shim.access import Access
from fastai_serving_shim.rest.access import require_access
from fastai_serving_shim.rest.errors import register_error_handlers
from fastai_serving_shim.rest.tf_serving import allowed_methods, api
from fastai_serving_shim.rest.v2 import v2
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import Upstream

FRONT = "rest"
UNMATCHED = {"protocol": "", "route": "unmatched", "verb": "", "model": ""}


def create_app(settings: Settings | None = None, upstream: Upstream | None = None) -> Flask:
    """The REST front for `settings` (default: from the environment); `upstream` replaces TorchServe in tests."""
    settings = settings or Settings.from_env()
    app = Flask("fastai_serving_shim")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["fastai_serving"] = Service(settings, upstream)
    app.register_blueprint(api)
    app.register_blueprint(v2)  # the Open Inference Protocol (KServe v2) beside TF Serving's API
    _count_requests(app)  # first: every request has its id and is counted, whatever refuses it
    register_error_handlers(app, allowed_methods)
    access = app.extensions["fastai_serving_access"] = Access(settings)
    require_access(app, access)  # after the count: a refused request is counted too
    return app


def read_again(app: Flask) -> None:
    """SIGHUP: the key file read again now, whether or not it changed."""
    keys = app.extensions["fastai_serving_access"].keys
    if keys is not None:
        keys.reload()


def _count_requests(app: Flask) -> None:
    """Every request's id (the client's X-Request-ID, or a new one), echoed on its answer; its count, time and
    status in the metrics and the access log; while draining, no connection is kept alive."""
    service: Service = app.extensions["fastai_serving"]

    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()
        g.observed = observed.begin(FRONT, request.headers.get(observed.REQUEST_ID_HEADER))
        g.metric = dict(UNMATCHED)
        metrics.IN_FLIGHT.inc()
        if tracing.ON:  # the request's span, under the client's traceparent: the service's spans are its children
            g.span = tracing.started(request.method, tracing.parent_of(request.headers), "SERVER", front=FRONT,
                                     request_id=g.observed.request_id)  # named for its route once it is known  # fmt: skip

    @app.after_request
    def answered(response: Response) -> Response:
        labels = g.get("metric", UNMATCHED)
        record = g.get("observed") or observed.begin(FRONT, request.headers.get(observed.REQUEST_ID_HEADER))
        response.headers[observed.REQUEST_ID_HEADER] = record.request_id
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        service.count(FRONT, labels["protocol"], labels["route"], labels["verb"], labels["model"],
                      str(response.status_code), seconds)  # fmt: skip
        if service.draining():
            response.headers["Connection"] = "close"  # so no idle connection is cut when the front stops
        if "span" in g:
            tracing.finished(*g.pop("span"), name=f"{request.method} {labels['route']}", protocol=labels["protocol"],
                             model=labels["model"], status=str(response.status_code))  # fmt: skip
        return response

    @app.teardown_request
    def finished(_error: BaseException | None) -> None:
        if "started" in g:
            metrics.IN_FLIGHT.dec()
        if "span" in g:  # an answer no after_request saw
            tracing.finished(*g.pop("span"))
        observed.end()
