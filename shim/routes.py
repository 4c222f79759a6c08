"""The shim's API, one function per route (the table in README.md, "The TF-Serving API")."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request

from shim.bodies import check_body
from shim.errors import ShimError
from shim.relay import relay
from shim.status import metadata_body, resolve_version, status_body

api = Blueprint("api", __name__)

OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")
VERBS = ("predict", "classify", "regress")
MODEL_PATH = re.compile(
    r"^(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<metadata>metadata))?$"
)


def shim():
    return current_app.extensions["fastai_serving"]


# --- /analyze: the original fastai-serving and chip-n-scale endpoint (the default model) ---------


@api.post("/analyze:predict")
def analyze_predict():
    return predict(shim().default_model(), None, "predict")


@api.get("/analyze")
def analyze_status():
    return model_status(shim().default_model(), None)


@api.get("/analyze/metadata")
def analyze_metadata():
    return model_metadata(shim().default_model(), None)


# --- /v1/models/...: TF Serving's REST API ------------------------------------------------------


@api.route("/v1/models/<path:model_path>", methods=["GET", "POST"])
def tf_serving(model_path: str):
    match = MODEL_PATH.match(model_path)
    if match is None:
        raise ShimError(404, f"no such route /v1/models/{model_path}: see /openapi.yaml for the API")
    model, version, verb = match["model"], match["version"], match["verb"]
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
    """Forward the body as it came (JSON whatever the Content-Type) in one upstream request."""
    body = request.get_data(cache=False)
    check_body(body, verb)
    client = shim().client
    torchserve_version = resolve_version(version, client.versions(model), model) if version else None
    return relay(client.predict(model, torchserve_version, body, verb), model)


def model_status(model: str, version: str | None) -> Response:
    descriptions = shim().client.versions(model)
    if version is not None:
        wanted = resolve_version(version, descriptions, model)
        descriptions = [d for d in descriptions if str(d.get("modelVersion")) == wanted]
    status, body = status_body(model, descriptions)
    response = jsonify(body)
    response.status_code = status
    return response


def model_metadata(model: str, version: str | None) -> Response:
    client = shim().client
    if version is None:
        default_version = client.versions(model, version=None)  # TorchServe's default version alone
        torchserve_version = str(default_version[0].get("modelVersion", "")) if default_version else ""
    else:
        torchserve_version = resolve_version(version, client.versions(model), model)
    described = shim().described(model, torchserve_version)
    return jsonify(metadata_body(model, torchserve_version, described))


@api.get("/openapi.yaml")
def openapi_document() -> Response:
    return Response(OPENAPI_FILE.read_bytes(), mimetype="application/yaml")
