"""The Open Inference Protocol's gRPC service (inference.GRPCInferenceService), beside TF Serving's on the same port.

Each method reads its message, calls one verb of the service, and writes the answer; inputs come as
typed `contents` or as `raw_input_contents`, outputs go back in `raw_output_contents`, as Triton's
server answers. Errors are `ServingError`s, turned into gRPC statuses by `answers_errors`.
"""

from __future__ import annotations

import grpc

from fastai_serving.contract.names import check_model_name
from fastai_serving.contract.vocabulary import PREDICT
from fastai_serving_protos import open_inference_pb2 as v2
from fastai_serving_protos import open_inference_pb2_grpc as v2_grpc
from fastai_serving_shim.calls import ModelRef, PredictCall
from fastai_serving_shim.grpc.errors import answers_errors, name_model
from fastai_serving_shim.protocols.v2_model import V2Payload, metadata, outputs_of, server_metadata
from fastai_serving_shim.protocols.v2_tensors import read_grpc, write_grpc
from fastai_serving_shim.service import Service

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PROTOCOL = "v2"  # the protocol label of these methods' metrics
INFER = "infer"  # their verb label: the protocol's one inference verb


def model_ref(name: str, version: str) -> ModelRef:
    """The model a v2 message names (it must name one: the protocol has no default model), for the metrics too."""
    name_model(name)
    check_model_name(name)
    return ModelRef(name, version)


class GRPCInferenceService(v2_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer."""

    protocol = PROTOCOL

    def __init__(self, service: Service) -> None:
        self.service = service

    @answers_errors("GRPCInferenceService/ServerLive")
    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=self.service.live())

    @answers_errors("GRPCInferenceService/ServerReady")
    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.service.readiness().ready)

    @answers_errors("GRPCInferenceService/ModelReady")
    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=self.service.status(model_ref(request.name, request.version)).ready)

    @answers_errors("GRPCInferenceService/ServerMetadata")
    def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(**server_metadata())

    @answers_errors("GRPCInferenceService/ModelMetadata")
    def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ModelMetadataResponse:
        body = metadata(self.service.describe(model_ref(request.name, request.version)))
        tensor = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=body["name"],
            versions=body["versions"],
            platform=body["platform"],
            inputs=[tensor(**spec) for spec in body["inputs"]],
            outputs=[tensor(**spec) for spec in body["outputs"]],
        )

    @answers_errors("GRPCInferenceService/ModelInfer", INFER)
    def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.ServicerContext) -> v2.ModelInferResponse:
        ref = model_ref(request.model_name, request.model_version)
        inference_request = read_grpc(request)
        deadlines = [s for s in (context.time_remaining(), inference_request.timeout_s) if s is not None]
        call = PredictCall(ref, PREDICT,
                           V2Payload(inference_request, request.model_name), min(deadlines) if deadlines else None)  # fmt: skip
        prediction = self.service.predict(call)
        response = v2.ModelInferResponse(model_name=prediction.model, model_version=prediction.version, id=request.id)
        write_grpc(response, outputs_of(prediction.description, inference_request, prediction.answers))
        return response
