"""TF Serving's REST API (and KServe v1's, which is the same), as docs/api.md lists it: each route parses its
request, calls one verb of the service, and encodes the answer."""

from __future__ import annotations

import re
from importlib import resources

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.vocabulary import PREDICT, VERBS
from fastai_serving_shim.calls import ModelRef, PredictCall
from fastai_serving_shim.protocols.tf_serving import JSON_CONTENT_TYPE, JsonPayload, metadata_body, status_body
from fastai_serving_shim.rest.errors import RouteError, json_response
from fastai_serving_shim.rest.timeouts import request_timeout_s
from fastai_serving_shim.service import Service

api = Blueprint("api", __name__)

MODEL_PATH = re.compile(
    r"^(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<metadata>metadata))?$"
)
TF_SERVING = "tfserving"  # the protocol label of these routes' metrics
METHOD_ORDER = ["GET", "HEAD", "POST", "OPTIONS"]  # as an Allow header lists them


def service() -> Service:
    return current_app.extensions["fastai_serving"]


def label(route: str, verb: str = "", protocol: str = TF_SERVING, model: str = "") -> None:
    """How this request is counted in the metrics: the route's template, the verb, and the model it names (the
    service keeps a model's name as a label only if TorchServe serves it)."""
    g.metric = {"protocol": protocol, "model": model, "route": route, "verb": verb}


def labelled(model: str) -> str:
    """The model a route named or the service resolved (/analyze: the default model), for this request's metrics."""
    g.metric["model"] = model
    return model


# --- Health: alive, and ready ---------------------------------------------------------------------


@api.get("/")
def alive() -> Response:
    """KServe v1's liveness: the process answers. Never asks TorchServe, so a busy or loading model never fails it."""
    label("/", protocol="")
    return jsonify({"status": "alive" if service().live() else "dead"})


@api.get("/ready")
def ready() -> Response:
    """The server's readiness: every model it serves has a ready worker, and it is not shutting down."""
    label("/ready", protocol="")
    readiness = service().readiness()
    if readiness.error:
        return json_response(503, {"error": readiness.error})
    body = {"ready": readiness.ready, "models": readiness.models}
    if readiness.draining:
        body["draining"] = True
    return json_response(200 if readiness.ready else 503, body)


@api.get("/metrics")
def prometheus_metrics() -> Response:
    label("/metrics", protocol="")
    text, content_type = service().metrics_text()
    return Response(text, mimetype=None, content_type=content_type)


# --- /analyze: the original fastai-serving and chip-n-scale endpoint (the default model) ---------


@api.post("/analyze:predict")
def analyze_predict() -> Response:
    label("/analyze:predict", PREDICT)
    return predict(ModelRef(), PREDICT)


@api.get("/analyze")
def analyze_status() -> Response:
    label("/analyze")
    return model_status(ModelRef())


@api.get("/analyze/metadata")
def analyze_metadata() -> Response:
    label("/analyze/metadata")
    return model_metadata(ModelRef())


# --- /v1/models/...: TF Serving's REST API ------------------------------------------------------


@api.get("/v1/models")
def list_models() -> Response:
    """KServe v1's model list: every model TorchServe serves."""
    label("/v1/models")
    return jsonify({"models": service().models()})


@api.route("/v1/models/<path:model_path>", methods=["GET", "POST"])
def tf_serving(model_path: str) -> Response:
    label("/v1/models/unmatched")
    match = MODEL_PATH.match(model_path)
    if match is None:
        raise RouteError(404, f"no such route /v1/models/{model_path}: see /openapi.yaml for the API")
    verb = match["verb"]
    ref = ModelRef(match["model"], match["version"] or "")
    route = "/v1/models/{model}" + ("/versions/{version}" if ref.version else "")
    label(route + (":{verb}" if verb else "/metadata" if match["metadata"] else ""), verb or "", model=ref.name)
    if match["label"] is not None:
        raise RouteError(404, f"version label {match['label']!r} is not defined: use /versions/<number>")
    if verb is not None:
        if verb not in VERBS:
            raise RouteError(404, f"unknown method :{verb}: use :predict, :classify or :regress")
        if request.method != "POST":
            raise RouteError(405, f":{verb} takes POST", allowed_methods(request.path))
        return predict(ref, verb)
    if request.method != "GET":
        raise RouteError(
            405, "POST goes to /v1/models/<model>[/versions/<n>]:predict; this route takes GET",
            allowed_methods(request.path),
        )  # fmt: skip
    if match["metadata"]:
        return model_metadata(ref)
    return model_status(ref)


@api.get("/openapi.yaml")
def openapi_document() -> Response:
    label("/openapi.yaml", protocol="")
    document = resources.files("fastai_serving_shim.rest").joinpath("openapi.yaml").read_bytes()
    return Response(document, mimetype="application/yaml")


# --- What the routes do ---------------------------------------------------------------------------


def predict(ref: ModelRef, verb: str) -> Response:
    """The body's outer shape checked here (JSON whatever the Content-Type), forwarded as it came; the handler's
    answer passed on as it is."""
    raw = request.get_data(cache=False)
    payload = JsonPayload(
        raw, read_body(raw, verb, raw_allowed=False)
    )  # the handler reads it again, instance by instance
    prediction = service().predict(PredictCall(ref, verb, payload, request_timeout_s(request.headers)))
    labelled(prediction.model)
    return Response(prediction.body, status=200, mimetype=JSON_CONTENT_TYPE)


def model_status(ref: ModelRef) -> Response:
    status = service().status(ref)
    labelled(status.model)
    return json_response(*status_body(status))


def model_metadata(ref: ModelRef) -> Response:
    description = service().describe(ref)
    labelled(description.model)
    return json_response(200, metadata_body(description))


def allowed_methods(path: str) -> list[str]:
    """The methods `path` takes (a 405's Allow header): TF Serving's model paths by their verb, the rest by route."""
    tf_serving_path = path.removeprefix("/v1/models/")
    if tf_serving_path != path:
        match = MODEL_PATH.match(tf_serving_path)
        if match is None or match["label"] is not None:
            return []
        return ["POST", "OPTIONS"] if match["verb"] is not None else ["GET", "HEAD", "OPTIONS"]
    try:
        methods = current_app.url_map.bind("").allowed_methods(path)
    except HTTPException:
        return []
    return sorted(methods, key=lambda method: (METHOD_ORDER + [method]).index(method))
