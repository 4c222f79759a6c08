"""The REST front's routes, as TF Serving's REST API names them (docs/api.md): thin, over the service."""

from __future__ import annotations

import re
from importlib import resources

from flask import Blueprint, Response, current_app, g, jsonify, request

from fastai_serving.bodies import read_body
from fastai_serving.names import check_model_name
from fastai_serving.vocabulary import PREDICT, VERBS
from fastai_serving_shim import metrics
from fastai_serving_shim.rest_errors import RouteError
from fastai_serving_shim.service import Service
from fastai_serving_shim.status import status_body
from fastai_serving_shim.torchserve import JSON

api = Blueprint("api", __name__)

MODEL_PATH = re.compile(
    r"^(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<metadata>metadata))?$"
)


TF_SERVING = "tfserving"  # the protocol label of these routes' metrics


def service() -> Service:
    return current_app.extensions["fastai_serving"]


def json_answer(status: int, body: dict) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def label(route: str, verb: str = "", protocol: str = TF_SERVING) -> None:
    """How this request is counted in the metrics: the route's template and the verb (the model is added once known)."""
    g.metric = {"protocol": protocol, "model": "", "route": route, "verb": verb}


def label_model(model: str) -> None:
    g.metric["model"] = model


# --- Health: alive, and ready ---------------------------------------------------------------------


@api.get("/")
def alive() -> Response:
    """KServe v1's liveness: the process answers. Never asks TorchServe, so a busy or loading model never fails it."""
    label("/", protocol="")
    return jsonify({"status": "alive"})


@api.get("/ready")
def ready() -> Response:
    """The server's readiness: every model it serves has a ready worker, and it is not shutting down."""
    label("/ready", protocol="")
    readiness = service().readiness()
    if readiness.error:
        return json_answer(503, {"error": readiness.error})
    body = {"ready": readiness.ready, "models": readiness.models}
    if readiness.draining:
        body["draining"] = True
    return json_answer(200 if readiness.ready else 503, body)


@api.get("/metrics")
def prometheus_metrics() -> Response:
    label("/metrics", protocol="")
    text, content_type = metrics.exposition(service().settings.torchserve_metrics)
    return Response(text, mimetype=None, content_type=content_type)


# --- /analyze: the original fastai-serving and chip-n-scale endpoint (the default model) ---------


@api.post("/analyze:predict")
def analyze_predict() -> Response:
    label("/analyze:predict", PREDICT)
    return predict(service().default_model(), None, PREDICT)


@api.get("/analyze")
def analyze_status() -> Response:
    label("/analyze")
    return model_status(service().default_model(), None)


@api.get("/analyze/metadata")
def analyze_metadata() -> Response:
    label("/analyze/metadata")
    return model_metadata(service().default_model(), None)


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
    model, version, verb = match["model"], match["version"], match["verb"]
    check_model_name(model)
    route = "/v1/models/{model}" + ("/versions/{version}" if version else "")
    label(route + (":{verb}" if verb else "/metadata" if match["metadata"] else ""), verb or "")
    if match["label"] is not None:
        raise RouteError(404, f"version label {match['label']!r} is not defined: use /versions/<number>")
    if verb is not None:
        if verb not in VERBS:
            raise RouteError(404, f"unknown method :{verb}: use :predict, :classify or :regress")
        if request.method != "POST":
            raise RouteError(405, f":{verb} takes POST")
        return predict(model, version, verb)
    if request.method != "GET":
        raise RouteError(405, "POST goes to /v1/models/<model>[/versions/<n>]:predict")
    if match["metadata"]:
        return model_metadata(model, version)
    return model_status(model, version)


# --- What the routes do ---------------------------------------------------------------------------


def predict(model: str, url_version: str | None, verb: str) -> Response:
    """Check the body's outer shape, then forward it as it came (JSON whatever the Content-Type) in one upstream request.

    The handler's answers, its own {"error"}s included, pass through as they are.
    """
    label_model(model)
    body = request.get_data(cache=False)
    parsed = read_body(body, verb, raw_allowed=False)  # the handler reads it again, instance by instance
    version = service().predict_version(model, url_version)
    service().check_answerable(model, version, parsed)
    answer = service().predict(model, version, body, verb)
    service().count_instances(model, verb, len(parsed.instances))
    return Response(answer.body, status=answer.status, mimetype=JSON)


def model_status(model: str, version: str | None) -> Response:
    label_model(model)
    return json_answer(*status_body(model, service().version_descriptions(model, version)))


def model_metadata(model: str, version: str | None) -> Response:
    label_model(model)
    return jsonify(service().metadata(model, version))


@api.get("/openapi.yaml")
def openapi_document() -> Response:
    label("/openapi.yaml", protocol="")
    return Response(
        resources.files("fastai_serving_shim").joinpath("openapi.yaml").read_bytes(), mimetype="application/yaml"
    )
