"""TF Serving's gRPC services: PredictionService and ModelService, each method a parse, a service verb, an encode.

A prediction's images go upstream as they arrived, in the images body (no base64, no JSON), in one
request through the service, so gRPC and REST calls share TorchServe's dynamic batches and give the
same answers; what a request's task cannot answer (its signature, its output filter) is refused
before inference.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2

from fastai_serving.contract.errors import BadInput, NotFound
from fastai_serving.contract.vocabulary import CLASSIFY, PREDICT, REGRESS
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType
from fastai_serving_protos.tensorflow_error_pb2 import Code
from fastai_serving_shim.calls import ModelRef, PredictCall, Prediction
from fastai_serving_shim.grpc.errors import answers_errors, name_model
from fastai_serving_shim.protocols.schema import TF_DTYPES, output_of
from fastai_serving_shim.protocols.tf_serving import DEFAULT_SIGNATURE, ImagesPayload, metadata_body, status_body
from fastai_serving_shim.protocols.tf_tensors import (
    images_of_examples,
    images_of_inputs,
    model_spec,
    signature_def_map,
    struct_of,
    tensor_of,
)
from fastai_serving_shim.service import Service

SIGNATURE_DEF = "signature_def"  # TF Serving's one metadata field
FASTAI = "fastai"  # ours: the handler's description (task, classes in output order, input), as a Struct
TF_SERVING = "tfserving"  # the protocol label of these services' metrics


def model_ref(spec: serving.ModelSpec) -> ModelRef:
    """The model and version a ModelSpec names (none: the default model, as /analyze), for this call's metrics too."""
    name_model(spec.name)
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise NotFound(f"version label {spec.version_label!r} is not defined: use a version number")
    return ModelRef(spec.name, str(spec.version.value) if choice == "version" else "")


class PredictionService(serving_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata; TF Serving's MultiInference answers UNIMPLEMENTED."""

    protocol = TF_SERVING

    def __init__(self, service: Service) -> None:
        self.service = service

    @answers_errors("PredictionService/Predict", PREDICT)
    def Predict(self, request: serving.PredictRequest, context: grpc.ServicerContext) -> serving.PredictResponse:
        signature_name = request.model_spec.signature_name
        images = ImagesPayload(images_of_inputs(request.inputs), PREDICT, signature_name, list(request.output_filter))
        prediction = self._predict(request.model_spec, images, context)
        output = output_of(prediction.description.task, signature_name)
        return serving.PredictResponse(
            model_spec=model_spec(prediction.model, prediction.version, signature_name or DEFAULT_SIGNATURE),
            outputs={
                output.tf_name: tensor_of(prediction.answers["predictions"], DataType.Value(TF_DTYPES[output.element]))
            },
        )

    @answers_errors("PredictionService/Classify", CLASSIFY)
    def Classify(
        self, request: serving.ClassificationRequest, context: grpc.ServicerContext
    ) -> serving.ClassificationResponse:
        signature_name = request.model_spec.signature_name
        images = ImagesPayload(images_of_examples(request.input), CLASSIFY, signature_name)
        prediction = self._predict(request.model_spec, images, context)
        result = serving.ClassificationResult(
            classifications=[
                serving.Classifications(classes=[serving.Class(label=label, score=score) for label, score in scores])
                for scores in prediction.answers["results"]
            ]
        )
        return serving.ClassificationResponse(
            model_spec=model_spec(prediction.model, prediction.version, signature_name or DEFAULT_SIGNATURE),
            result=result,
        )

    @answers_errors("PredictionService/Regress", REGRESS)
    def Regress(self, request: serving.RegressionRequest, context: grpc.ServicerContext) -> serving.RegressionResponse:
        signature_name = request.model_spec.signature_name
        images = ImagesPayload(images_of_examples(request.input), REGRESS, signature_name)
        prediction = self._predict(request.model_spec, images, context)
        values = prediction.answers["results"]
        several = next((value for value in values if isinstance(value, list)), None)
        if several is not None:
            raise BadInput(f"Regress answers one value per example; this model gives {len(several)}: use Predict")
        result = serving.RegressionResult(regressions=[serving.Regression(value=value) for value in values])
        return serving.RegressionResponse(
            model_spec=model_spec(prediction.model, prediction.version, signature_name or DEFAULT_SIGNATURE),
            result=result,
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
        description = self.service.describe(model_ref(request.model_spec))
        name_model(description.model)
        body = metadata_body(description)  # the REST metadata route's body
        metadata = {}
        for field in fields:
            packed = any_pb2.Any()
            if field == SIGNATURE_DEF:
                packed.Pack(signature_def_map(body["metadata"]["signature_def"]["signature_def"]))
            else:
                packed.Pack(struct_of(body["metadata"]["fastai"]))
            metadata[field] = packed
        return serving.GetModelMetadataResponse(
            model_spec=model_spec(description.model, description.version), metadata=metadata
        )

    def _predict(self, spec: serving.ModelSpec, images: ImagesPayload, context: grpc.ServicerContext) -> Prediction:
        """One prediction of `images` for the model `spec` names, within the client's deadline."""
        prediction = self.service.predict(PredictCall(model_ref(spec), images.verb, images, context.time_remaining()))
        name_model(prediction.model)
        return prediction


class ModelService(serving_grpc.ModelServiceServicer):
    """GetModelStatus from TorchServe's workers; TF Serving's HandleReloadConfigRequest answers UNIMPLEMENTED."""

    protocol = TF_SERVING

    def __init__(self, service: Service) -> None:
        self.service = service

    @answers_errors("ModelService/GetModelStatus")
    def GetModelStatus(
        self, request: serving.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> serving.GetModelStatusResponse:
        status = self.service.status(model_ref(request.model_spec))
        name_model(status.model)
        _, body = status_body(status)
        return serving.GetModelStatusResponse(
            model_version_status=[
                serving.ModelVersionStatus(
                    version=int(version["version"]),
                    state=serving.ModelVersionStatus.State.Value(version["state"]),
                    status=serving.StatusProto(
                        error_code=Code.Value(version["status"]["error_code"]),
                        error_message=version["status"]["error_message"],
                    ),
                )
                for version in body["model_version_status"]
                if version["version"].isdigit()  # TF Serving's versions are numbers; TorchServe's "1.5" has none
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
