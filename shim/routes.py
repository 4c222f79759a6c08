"""The routes, as TF Serving's REST API names them (see README, "The TF-Serving API")."""

from __future__ import annotations

import re
from importlib import resources

from flask import Blueprint, Response, current_app, jsonify, request

from fastai_serving.contract import PREDICT, VERBS, check_model_name, read_body
from shim.errors import ShimError
from shim.relay import relay
from shim.status import readiness_body, status_body

api = Blueprint("api", __name__)

MODEL_PATH = re.compile(
    r"^(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<metadata>metadata))?$"
)


def shim():
    return current_app.extensions["fastai_serving"]


def json_answer(status: int, body: dict) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


# --- /analyze: the original fastai-serving and chip-n-scale endpoint (the default model) ---------


@api.post("/analyze:predict")
def analyze_predict() -> Response:
    return predict(shim().default_model(), None, PREDICT)


@api.get("/analyze")
def analyze_status() -> Response:
    return model_status(shim().default_model(), None)


@api.get("/analyze/metadata")
def analyze_metadata() -> Response:
    return model_metadata(shim().default_model(), None)


# --- The server's readiness: every model it serves can serve --------------------------------------


@api.get("/ready")
def ready() -> Response:
    return json_answer(*readiness_body(shim().models_ready()))


# --- /v1/models/...: TF Serving's REST API ------------------------------------------------------


@api.route("/v1/models/<path:model_path>", methods=["GET", "POST"])
def tf_serving(model_path: str) -> Response:
    match = MODEL_PATH.match(model_path)
    if match is None:
        raise ShimError(404, f"no such route /v1/models/{model_path}: see /openapi.yaml for the API")
    model, version, verb = match["model"], match["version"], match["verb"]
    check_model_name(model)
    if match["label"] is not None:
        raise ShimError(404, f"version label {match['label']!r} is not defined: use /versions/<number>")
    if verb is not None:
        if verb not in VERBS:
            raise ShimError(404, f"unknown method :{verb}: use :predict, :classify or :regress")
        if request.method != "POST":
            raise ShimError(405, f":{verb} takes POST")
        return predict(model, version, verb)
    if request.method != "GET":
        raise ShimError(405, "POST goes to /v1/models/<model>[/versions/<n>]:predict")
    if match["metadata"]:
        return model_metadata(model, version)
    return model_status(model, version)


# --- What the routes do ---------------------------------------------------------------------------


def predict(model: str, version: str | None, verb: str) -> Response:
    """Check the body's outer shape, then forward it as it came (JSON whatever the Content-Type) in one upstream request."""
    body = request.get_data(cache=False)
    read_body(body, verb, raw_allowed=False)  # the handler reads it again, instance by instance
    torchserve_version = shim().predict_version(model, version) if version else None
    return relay(shim().client.predict(model, torchserve_version, body, verb), model)


def model_status(model: str, version: str | None) -> Response:
    return json_answer(*status_body(model, shim().version_descriptions(model, version)))


def model_metadata(model: str, version: str | None) -> Response:
    return jsonify(shim().metadata(model, version))


@api.get("/openapi.yaml")
def openapi_document() -> Response:
    return Response(resources.files("shim").joinpath("openapi.yaml").read_bytes(), mimetype="application/yaml")
