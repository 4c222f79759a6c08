"""The Open Inference Protocol's REST routes (KServe v2), beside TF Serving's on the same port.

As KServe's required_api.md and the protocol's REST spec name them: health (with JSON bodies, which
KServe's client reads), server and model metadata, model readiness and inference, each model route
with an optional /versions/<v>. Each route parses its request, calls one verb of the service, and
encodes the answer; errors are `{"error": ...}` through the front's one error handler.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from fastai_serving.contract.vocabulary import PREDICT
from fastai_serving_shim.calls import ModelRef, PredictCall
from fastai_serving_shim.protocols.v2_model import V2Payload, metadata, outputs_of, server_metadata
from fastai_serving_shim.protocols.v2_tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH, read_rest, write_rest
from fastai_serving_shim.rest.errors import json_response
from fastai_serving_shim.rest.tf_serving import label, labelled, service
from fastai_serving_shim.rest.timeouts import request_timeout_s

v2 = Blueprint("v2", __name__)

PROTOCOL = "v2"  # the protocol label of the v2 routes' metrics
INFER = "infer"  # their verb label: the protocol's one inference verb


def model_route(template: str, version: str | None) -> str:
    return "/v2/models/{model}" + ("/versions/{version}" if version is not None else "") + template


@v2.get("/v2/health/live")
def live() -> Response:
    label("/v2/health/live", protocol=PROTOCOL)
    return json_response(200, {"live": service().live()})


@v2.get("/v2/health/ready")
def ready() -> Response:
    """200 while every model can serve; 503 while any cannot, or while the server drains."""
    label("/v2/health/ready", protocol=PROTOCOL)
    is_ready = service().readiness().ready
    return json_response(200 if is_ready else 503, {"ready": is_ready})


@v2.get("/v2")
def server() -> Response:
    label("/v2", protocol=PROTOCOL)
    return json_response(200, server_metadata())


@v2.get("/v2/models/<model>")
@v2.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    label(model_route("", version), protocol=PROTOCOL, model=model)
    return json_response(200, metadata(service().describe(ModelRef(model, version or ""))))


@v2.get("/v2/models/<model>/ready")
@v2.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    label(model_route("/ready", version), protocol=PROTOCOL, model=model)
    is_ready = service().status(ModelRef(model, version or "")).ready
    return json_response(200 if is_ready else 503, {"name": model, "ready": is_ready})


@v2.post("/v2/models/<model>/infer")
@v2.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    """JSON tensors, or (with Inference-Header-Content-Length) JSON then binary tensors; answered alike."""
    label(model_route("/infer", version), INFER, protocol=PROTOCOL, model=model)
    inference_request = read_rest(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
    timeouts = [s for s in (request_timeout_s(request.headers), inference_request.timeout_s) if s is not None]
    call = PredictCall(ModelRef(model, version or ""), PREDICT, V2Payload(inference_request, model),
                       min(timeouts) if timeouts else None)  # fmt: skip
    prediction = service().predict(call)
    labelled(prediction.model)
    outputs = outputs_of(prediction.description, inference_request, prediction.answers)
    body, header_length = write_rest(prediction.model, prediction.version, inference_request, outputs)
    if header_length is None:
        return Response(body, status=200, mimetype="application/json")
    return Response(body, status=200, content_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)})
