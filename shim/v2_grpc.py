"""The Open Inference Protocol's gRPC service (inference.GRPCInferenceService) on the gRPC front's port.

Served by the same gRPC server as TF Serving's services. Each method reads its message, calls
`v2_service` (the REST routes' verbs), and writes the answer; inputs come as typed `contents` or as
`raw_input_contents`, outputs go back in `raw_output_contents`, as Triton's server answers. Errors
are `ServiceError`s (the codec's `BadInput` too), turned into gRPC statuses by `answers_errors` (INVALID_ARGUMENT, NOT_FOUND, ...).
"""

from __future__ import annotations

import grpc

from fastai_serving_protos import open_inference_pb2 as v2
from fastai_serving_protos import open_inference_pb2_grpc as v2_grpc
from fastai_serving_shim.grpc_errors import answers_errors, name_model
from fastai_serving_shim.service import Service
from fastai_serving_shim.v2_service import INFER, PROTOCOL, OpenInference
from fastai_serving_shim.v2_tensors import read_grpc, write_grpc

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class GRPCInferenceService(v2_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer."""

    protocol = PROTOCOL

    def __init__(self, service: Service) -> None:
        self.service = service  # what answers_errors counts each call with
        self.v2 = OpenInference(service)

    @answers_errors("GRPCInferenceService/ServerLive")
    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=self.v2.server_live())

    @answers_errors("GRPCInferenceService/ServerReady")
    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.v2.server_ready())

    @answers_errors("GRPCInferenceService/ModelReady")
    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        name_model(request.name)
        return v2.ModelReadyResponse(ready=self.v2.model_ready(request.name, request.version or None))

    @answers_errors("GRPCInferenceService/ServerMetadata")
    def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(**self.v2.server_metadata())

    @answers_errors("GRPCInferenceService/ModelMetadata")
    def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ModelMetadataResponse:
        name_model(request.name)
        body = self.v2.model_metadata(request.name, request.version or None)
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
        name_model(request.model_name)
        inference_request = read_grpc(request)
        inferred = self.v2.infer(
            request.model_name, request.model_version or None, inference_request, context.time_remaining()
        )
        response = v2.ModelInferResponse(model_name=inferred.model, model_version=inferred.version, id=request.id)
        write_grpc(response, inferred.outputs)
        return response
