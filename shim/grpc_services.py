"""TF Serving's gRPC services over the front-neutral service: PredictionService and ModelService.

Each call is one upstream request to TorchServe's inference API through the service (so gRPC
and REST calls share TorchServe's dynamic batches), carrying the images as they arrived in the
images body (no base64, no JSON). Models, versions, the default model, status and metadata
come from the same `Service` as the REST routes, so both fronts give the same answers; what a
request's task cannot answer (its signature, its output filter) is refused before inference.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2

from fastai_serving.bodies import Body
from fastai_serving.errors import BadInput
from fastai_serving.images_wire import IMAGES_CONTENT_TYPE, images_body
from fastai_serving.names import check_model_name
from fastai_serving.vocabulary import (
    CLASS_INDEX_SIGNATURE,
    CLASSIFY,
    EXAMPLES,
    MULTI_LABEL,
    PREDICT,
    REGRESS,
    ROWS,
)
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType
from fastai_serving_protos.tensorflow_error_pb2 import Code
from fastai_serving_shim.errors import Failure, ServiceError
from fastai_serving_shim.grpc_errors import answers_errors, name_model
from fastai_serving_shim.grpc_tensors import (
    images_of_examples,
    images_of_inputs,
    model_spec,
    signature_def_map,
    struct_of,
    tensor_of,
)
from fastai_serving_shim.service import Service
from fastai_serving_shim.status import signature_output, status_body, tf_version
from fastai_serving_shim.torchserve import UpstreamAnswer

SIGNATURE_DEF = "signature_def"  # TF Serving's one metadata field
FASTAI = "fastai"  # ours: the handler's description (task, classes in output order, input), as a Struct
DEFAULT_SIGNATURE = "serving_default"
TF_SERVING = "tfserving"  # the protocol label of these services' metrics


class Target:
    """Which model and TorchServe version a ModelSpec names: the default model when it names none, as /analyze."""

    def __init__(self, service: Service, spec: serving.ModelSpec) -> None:
        self.model = spec.name or service.default_model()
        name_model(self.model)
        check_model_name(self.model)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise ServiceError(
                Failure.NOT_FOUND, f"version label {spec.version_label!r} is not defined: use a version number"
            )
        self.url_version = str(spec.version.value) if choice == "version" else None  # as a REST URL's /versions/<n>
        self.service = service

    def version(self) -> str | None:
        """The TorchServe version to predict with (None: the default), resolved from the routing cache."""
        return self.service.predict_version(self.model, self.url_version)


def check_output_filter(task: str, signature_name: str, output_filter: list[str]) -> None:
    """Refuse a Predict whose task cannot answer its signature or whose output filter names another output."""
    if signature_name == CLASS_INDEX_SIGNATURE and task == MULTI_LABEL:
        raise BadInput(
            "signature_name 'classes' of a multi-label model answers a list of class indices per image, "
            "which no tensor holds: use serving_default (one score per class) and threshold it"
        )
    name, _ = signature_output(task, signature_name)
    unknown = [alias for alias in output_filter if alias != name]
    if unknown:
        raise BadInput(f"output_filter names {unknown[0]!r}: this signature's one output is {name!r}")


class PredictionService(serving_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata; TF Serving's MultiInference answers UNIMPLEMENTED."""

    protocol = TF_SERVING

    def __init__(self, service: Service) -> None:
        self.service = service

    @answers_errors("PredictionService/Predict", PREDICT)
    def Predict(self, request: serving.PredictRequest, context: grpc.ServicerContext) -> serving.PredictResponse:
        target = Target(self.service, request.model_spec)
        signature_name = request.model_spec.signature_name
        output_filter = list(request.output_filter)
        version = target.version()
        known_task = self.service.task(target.model, version)
        if known_task:  # refused before inference; else once the answer names the task
            check_output_filter(known_task, signature_name, output_filter)
        images = images_of_inputs(request.inputs)
        answer, answers = self._infer(target, version, images, PREDICT, signature_name, context)
        check_output_filter(answer.task, signature_name, output_filter)
        name, dtype = signature_output(answer.task, signature_name)
        return serving.PredictResponse(
            model_spec=model_spec(target.model, tf_version(answer.model_version), signature_name or DEFAULT_SIGNATURE),
            outputs={name: tensor_of(answers["predictions"], DataType.Value(dtype))},
        )

    @answers_errors("PredictionService/Classify", CLASSIFY)
    def Classify(
        self, request: serving.ClassificationRequest, context: grpc.ServicerContext
    ) -> serving.ClassificationResponse:
        target = Target(self.service, request.model_spec)
        images = images_of_examples(request.input)
        version = target.version()
        answer, answers = self._infer(target, version, images, CLASSIFY, request.model_spec.signature_name, context)
        result = serving.ClassificationResult(
            classifications=[
                serving.Classifications(classes=[serving.Class(label=label, score=score) for label, score in scores])
                for scores in answers["results"]
            ]
        )
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        return serving.ClassificationResponse(
            model_spec=model_spec(target.model, tf_version(answer.model_version), signature), result=result
        )

    @answers_errors("PredictionService/Regress", REGRESS)
    def Regress(self, request: serving.RegressionRequest, context: grpc.ServicerContext) -> serving.RegressionResponse:
        target = Target(self.service, request.model_spec)
        images = images_of_examples(request.input)
        version = target.version()
        answer, answers = self._infer(target, version, images, REGRESS, request.model_spec.signature_name, context)
        values = answers["results"]
        several = next((value for value in values if isinstance(value, list)), None)
        if several is not None:
            raise BadInput(f"Regress answers one value per example; this model gives {len(several)}: use Predict")
        result = serving.RegressionResult(regressions=[serving.Regression(value=value) for value in values])
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        return serving.RegressionResponse(
            model_spec=model_spec(target.model, tf_version(answer.model_version), signature), result=result
        )

    @answers_errors("PredictionService/GetModelMetadata")
    def GetModelMetadata(
        self, request: serving.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> serving.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise BadInput("GetModelMetadataRequest must specify at least one metadata_field ('signature_def')")
        unsupported = [field for field in fields if field not in (SIGNATURE_DEF, FASTAI)]
        if unsupported:
            raise BadInput(f"metadata field {unsupported[0]!r} is not supported: ask for 'signature_def' or 'fastai'")
        target = Target(self.service, request.model_spec)
        body = self.service.metadata(target.model, target.url_version)  # the REST metadata route's body
        metadata = {}
        for field in fields:
            packed = any_pb2.Any()
            if field == SIGNATURE_DEF:
                packed.Pack(signature_def_map(body["metadata"]["signature_def"]["signature_def"]))
            else:
                packed.Pack(struct_of(body["metadata"]["fastai"]))
            metadata[field] = packed
        return serving.GetModelMetadataResponse(
            model_spec=model_spec(target.model, body["model_spec"]["version"]), metadata=metadata
        )

    def _infer(
        self,
        target: Target,
        version: str | None,
        images: list[bytes],
        verb: str,
        signature_name: str,
        context: grpc.ServicerContext,
    ) -> tuple[UpstreamAnswer, dict[str, Any]]:
        """One upstream request for `images`, within the client's deadline; the handler's answer, checked."""
        form = ROWS if verb == PREDICT else EXAMPLES
        self.service.check_answerable(target.model, version, Body(form, images, verb, signature_name))
        answer = self.service.predict(
            target.model,
            version,
            images_body(images, signature_name),
            verb,
            content_type=IMAGES_CONTENT_TYPE,
            timeout_s=context.time_remaining(),
        )
        answers = self.service.handler_answers(target.model, answer, "gRPC front")
        self.service.count_instances(target.model, verb, len(images))
        return answer, answers


class ModelService(serving_grpc.ModelServiceServicer):
    """GetModelStatus from TorchServe's workers; TF Serving's HandleReloadConfigRequest answers UNIMPLEMENTED."""

    protocol = TF_SERVING

    def __init__(self, service: Service) -> None:
        self.service = service

    @answers_errors("ModelService/GetModelStatus")
    def GetModelStatus(
        self, request: serving.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> serving.GetModelStatusResponse:
        target = Target(self.service, request.model_spec)
        _, body = status_body(target.model, self.service.version_descriptions(target.model, target.url_version))
        return serving.GetModelStatusResponse(
            model_version_status=[
                serving.ModelVersionStatus(
                    version=int(status["version"]),
                    state=serving.ModelVersionStatus.State.Value(status["state"]),
                    status=serving.StatusProto(
                        error_code=Code.Value(status["status"]["error_code"]),
                        error_message=status["status"]["error_message"],
                    ),
                )
                for status in body["model_version_status"]
                if status["version"].isdigit()  # TF Serving's versions are numbers; TorchServe's "1.5" has none
            ]
        )


def unimplemented(service: str, method: str) -> str:
    """What a client is told when it calls a TF Serving method this server does not serve."""
    served = {
        "tensorflow.serving.PredictionService": "Predict, Classify, Regress and GetModelMetadata",
        "tensorflow.serving.ModelService": "GetModelStatus",
    }
    return f"{service}/{method} is not served by fastai-serving; it serves {served.get(service, 'TF Serving')}"


class Unimplemented(grpc.GenericRpcHandler):
    """TF Serving's methods we do not serve (MultiInference, HandleReloadConfigRequest): UNIMPLEMENTED, saying what is."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if not service.startswith("tensorflow.serving."):
            return None  # gRPC's own answer: UNIMPLEMENTED, method not found

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, unimplemented(service, method))

        return grpc.unary_unary_rpc_method_handler(refuse)
