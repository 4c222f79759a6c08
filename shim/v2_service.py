"""The Open Inference Protocol's verbs on the shim's service: health, metadata and inference, for both fronts.

The REST blueprint (`v2_routes`) and the gRPC servicer (`v2_grpc`) parse their wire form into a
`v2_tensors.InferRequest` and call these; each answer comes from the same service the TF-Serving
routes use (models, versions, readiness, the handler's description), and each inference is one
upstream request in the body the TF-Serving routes send, so it shares their TorchServe batches and
their numbers. Errors are `ServingError`s, mapped onto HTTP or gRPC by each front in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import TYPE_CHECKING, Any

from fastai_serving.contract import PREDICT, check_model_name
from fastai_serving.errors import BadInput, ServingError
from fastai_serving_shim.errors import ShimError
from fastai_serving_shim.relay import upstream_error
from fastai_serving_shim.status import resolve_version, status_body, tf_version
from fastai_serving_shim.v2_model import check_outputs, model_tensors, output_tensors, upstream_body
from fastai_serving_shim.v2_model import metadata as model_metadata_body
from fastai_serving_shim.v2_tensors import InferRequest, Tensor

if TYPE_CHECKING:  # the service's type alone: app.py registers the v2 routes, which use this module
    from fastai_serving_shim.app import Shim

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
    """The v2 verbs over one `Shim` (the service both fronts share)."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim

    def server_live(self) -> bool:
        return True  # the process answers; never asks TorchServe, as GET / does

    def server_ready(self) -> bool:
        """Every model the server waits for has a ready worker, and the server is not draining."""
        if self.shim.draining():
            return False
        try:
            models_ready = self.shim.models_ready()
        except ServingError:
            return False  # TorchServe unreachable
        return bool(models_ready) and all(models_ready.values())

    def model_ready(self, model: str, version: str | None) -> bool:
        check_model_name(model)
        _, body = status_body(model, self.shim.version_descriptions(model, _url_version(version)))
        return bool(body["ready"])

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """The v2 metadata of a model's default version, or of the version named."""
        check_model_name(model)
        descriptions = self.shim.client.versions(model)
        if version is None:
            torchserve_version = ""  # TorchServe's default version
        else:
            torchserve_version = resolve_version(_url_version(version), descriptions, model)
        described = self.shim.described(model, torchserve_version)
        versions = [tf_version(str(d.get("modelVersion", ""))) for d in descriptions]
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
        url_version = _url_version(version)
        torchserve_version = self.shim.predict_version(model, url_version) if url_version else None
        tensors = model_tensors(self.shim.described(model, torchserve_version or ""))
        check_outputs(tensors, request)  # before any inference: a bad request costs no batch slot
        body, content_type = upstream_body(tensors, request)
        deadlines = [s for s in (deadline_s, request.timeout_s) if s is not None]
        answer = self.shim.client.predict(
            model, torchserve_version, body, PREDICT, content_type=content_type,
            timeout_s=min(deadlines) if deadlines else None,
        )  # fmt: skip
        error = upstream_error(answer, model)
        if error is not None:
            raise error
        if not answer.model_version:  # the handler names its version on every answer, its errors too
            raise ShimError(
                412,
                f"the archive of model {model!r} was made by an older fastai-serving, whose handler cannot "
                "read the v2 front's requests: rebuild it with scripts/make-archive",
            )
        answers = json.loads(answer.body)
        if answer.status != 200:
            raise ServingError(str(answers.get("error", "")), answer.status)  # the handler's own, naming the instance
        if answer.task and answer.task != tensors.task:  # a new default version of another task since the last look
            tensors = model_tensors(self.shim.described(model, answer.model_version))
        return Inferred(model, tf_version(answer.model_version), output_tensors(tensors, request, answers))


def _url_version(version: str | None) -> str | None:
    """A v2 URL's or message's version ("" or None: the default one) as a TF Serving URL version."""
    return version or None
