"""The Open Inference Protocol's verbs on the front-neutral service: health, metadata and inference, for both fronts.

The REST blueprint (`v2_routes`) and the gRPC servicer (`v2_grpc`) parse their wire form into a
`v2_tensors.InferRequest` and call these; each answer comes from the same `Service` the TF-Serving
routes use (models, versions, readiness, the handler's description), and each inference is one
upstream request in the body the TF-Serving routes send, so it shares their TorchServe batches and
their numbers. Errors are the service's `ServiceError`s (the codec's `BadInput` too), mapped onto
HTTP or gRPC by each front in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Any

from fastai_serving.errors import BadInput
from fastai_serving.names import check_model_name
from fastai_serving.vocabulary import PREDICT
from fastai_serving_shim.service import Service
from fastai_serving_shim.status import tf_version
from fastai_serving_shim.v2_model import check_outputs, model_tensors, output_tensors, upstream_body
from fastai_serving_shim.v2_model import metadata as model_metadata_body
from fastai_serving_shim.v2_tensors import InferRequest, Tensor

PROTOCOL = "v2"  # the protocol label of the v2 routes' and methods' metrics
INFER = "infer"  # their verb label: the protocol's one inference verb
SERVER_NAME = "fastai-serving"
# The protocol's extensions this server speaks (Triton's names): the binary tensor data extension.
EXTENSIONS = ("binary_tensor_data",)


def server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Inferred:
    """An inference's answer: the model, the version that answered (TF Serving's numbering), the output tensors."""

    model: str
    version: str
    outputs: list[Tensor]


class OpenInference:
    """The v2 verbs over the `Service` every front shares."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def server_live(self) -> bool:
        return True  # the process answers; never asks TorchServe, as GET / does

    def server_ready(self) -> bool:
        """Every model the server waits for has a ready worker, and the server is not draining."""
        return self.service.readiness().ready

    def model_ready(self, model: str, version: str | None) -> bool:
        check_model_name(model)
        return self.service.model_ready(model, _url_version(version))

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """The v2 metadata of a model's default version, or of the version named."""
        check_model_name(model)
        _, described = self.service.described_version(model, _url_version(version))
        versions = [tf_version(str(d.get("modelVersion", ""))) for d in self.service.version_descriptions(model, None)]
        return model_metadata_body(model, versions, model_tensors(described), described)

    def infer(
        self, model: str, version: str | None, request: InferRequest, deadline_s: float | None = None
    ) -> Inferred:
        """One upstream request for `request`'s instances; its outputs as the model's v2 tensors.

        `deadline_s`: the caller's own (a gRPC client's); the request's `timeout` parameter may shorten it.
        """
        check_model_name(model)
        if request.model_name and request.model_name != model:
            raise BadInput(f"the request body names model {request.model_name!r}, its URL {model!r}")
        torchserve_version = self.service.predict_version(model, _url_version(version))
        tensors = model_tensors(self.service.described(model, torchserve_version or ""))
        check_outputs(tensors, request)  # before any inference: a bad request costs no batch slot
        body, content_type = upstream_body(tensors, request)
        deadlines = [s for s in (deadline_s, request.timeout_s) if s is not None]
        answer = self.service.predict(
            model, torchserve_version, body, PREDICT, content_type=content_type,
            timeout_s=min(deadlines) if deadlines else None,
        )  # fmt: skip
        answers = self.service.handler_answers(model, answer, "v2 front")
        if answer.task and answer.task != tensors.task:  # a new default version of another task since the last look
            tensors = model_tensors(self.service.described(model, answer.model_version))
        outputs = output_tensors(tensors, request, answers)
        self.service.count_instances(model, INFER, len(answers["predictions"]))
        return Inferred(model, tf_version(answer.model_version), outputs)


def _url_version(version: str | None) -> str | None:
    """A v2 URL's or message's version ("" or None: the default one) as a TF Serving URL version."""
    return version or None
