"""The Open Inference Protocol's REST routes (KServe v2), beside TF Serving's on the shim's port.

As KServe's required_api.md and the protocol's REST spec name them: health (with JSON bodies, which
KServe's client reads), server and model metadata, model readiness and inference, each model route
with an optional /versions/<v>. Each route parses its request, calls `v2_service`, and answers; errors
are `{"error": ...}` through the shim's one error handler.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from fastai_serving_shim.v2_service import INFER, PROTOCOL, OpenInference
from fastai_serving_shim.v2_tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH, read_rest, write_rest

v2 = Blueprint("v2", __name__)


def service() -> OpenInference:
    return OpenInference(current_app.extensions["fastai_serving"])


def label(route: str, model: str = "", verb: str = "") -> None:
    """How this request is counted in the metrics (the service keeps a model's name only if it is served)."""
    g.metric = {"protocol": PROTOCOL, "model": model, "route": route, "verb": verb}


def answer(status: int, body: dict) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def model_route(template: str, version: str | None) -> str:
    return "/v2/models/{model}" + ("/versions/{version}" if version is not None else "") + template


@v2.get("/v2/health/live")
def live() -> Response:
    label("/v2/health/live")
    return answer(200, {"live": service().server_live()})


@v2.get("/v2/health/ready")
def ready() -> Response:
    """200 while every model can serve; 503 while any cannot, or while the server drains."""
    label("/v2/health/ready")
    is_ready = service().server_ready()
    return answer(200 if is_ready else 503, {"ready": is_ready})


@v2.get("/v2")
def server_metadata() -> Response:
    label("/v2")
    return answer(200, service().server_metadata())


@v2.get("/v2/models/<model>")
@v2.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    label(model_route("", version), model)
    return answer(200, service().model_metadata(model, version))


@v2.get("/v2/models/<model>/ready")
@v2.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    label(model_route("/ready", version), model)
    is_ready = service().model_ready(model, version)
    return answer(200 if is_ready else 503, {"name": model, "ready": is_ready})


@v2.post("/v2/models/<model>/infer")
@v2.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    """JSON tensors, or (with Inference-Header-Content-Length) JSON then binary tensors; answered alike."""
    label(model_route("/infer", version), model, INFER)
    inference_request = read_rest(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
    inferred = service().infer(model, version, inference_request)
    body, header_length = write_rest(inferred.model, inferred.version, inference_request, inferred.outputs)
    if header_length is None:
        return Response(body, status=200, mimetype="application/json")
    return Response(body, status=200, content_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)})
