"""The gRPC front's access check: an interceptor that refuses a call without a good API key before its
message is read (shim/access.py says who may call). A key comes as the `authorization` metadata,
`Bearer <key>`; a refusal is UNAUTHENTICATED, counted under its reason and in the request metrics with
the RPC's name (one of the front's own methods, never a client's words)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

from fastai_serving.contract.errors import ServingError
from fastai_serving_protos import open_inference_pb2, tensorflow_serving_pb2
from fastai_serving_shim import observed
from fastai_serving_shim.access import Access, Route, bearer_key
from fastai_serving_shim.grpc.errors import FRONT, GRPC_CODE
from fastai_serving_shim.service import Service

HOW = "send the metadata authorization: Bearer <key>"
V2_HEALTH = ("ServerLive", "ServerReady")  # the Open Inference Protocol's server health: open as gRPC health is
REFLECTION_PREFIX = "/grpc.reflection."  # server reflection (v1alpha, v1): the API's description, open as /openapi.yaml


def _methods() -> dict[str, tuple[str, str, Route]]:
    """Every method the front serves: its full name -> (protocol label, route label, kind of route)."""
    routes = {}
    services = [
        ("tfserving", tensorflow_serving_pb2.DESCRIPTOR.services_by_name["PredictionService"]),
        ("tfserving", tensorflow_serving_pb2.DESCRIPTOR.services_by_name["ModelService"]),
        ("v2", open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]),
        ("", health_pb2.DESCRIPTOR.services_by_name["Health"]),
    ]
    for protocol, service in services:
        for method in service.methods:
            health = service.name == "Health" or (protocol == "v2" and method.name in V2_HEALTH)
            kind = Route.HEALTH if health else Route.MODEL
            routes[f"/{service.full_name}/{method.name}"] = (protocol, f"{service.name}/{method.name}", kind)
    return routes


METHODS = _methods()
UNKNOWN = ("", "unknown", Route.MODEL)  # a method the front does not serve: a key first, then UNIMPLEMENTED


class AccessCheck(grpc.aio.ServerInterceptor):
    """Refuses a call without a good key (UNAUTHENTICATED) before anything reads its message."""

    def __init__(self, access: Access, service: Service) -> None:
        self.access, self.service = access, service

    async def intercept_service(self, continuation: Callable, handler_call_details) -> grpc.RpcMethodHandler:
        protocol, route, kind = METHODS.get(handler_call_details.method, UNKNOWN)
        if handler_call_details.method.startswith(REFLECTION_PREFIX):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            self.access.check(FRONT, kind, bearer_key(metadata.get("authorization")), HOW, lambda: False)
        except ServingError as error:
            code = GRPC_CODE[error.failure]
            record = observed.begin(FRONT, metadata.get(observed.REQUEST_ID_METADATA))
            self.service.count(FRONT, protocol, route, "", "", code.name, 0.0)
            observed.end()
            echoed = ((observed.REQUEST_ID_METADATA, record.request_id),)
            return _refusing(await continuation(handler_call_details), code, error.message, echoed)
        return await continuation(handler_call_details)


def _refusing(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str, trailing_metadata: tuple
) -> grpc.RpcMethodHandler:
    """A handler that ends the call with `code` (and `trailing_metadata`: its id) without reading its request."""

    async def refuse(_requests, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message, trailing_metadata)

    like = handler or grpc.unary_unary_rpc_method_handler(None)
    return grpc.stream_unary_rpc_method_handler(
        refuse, request_deserializer=like.request_deserializer, response_serializer=like.response_serializer
    )
