"""inference.GRPCInferenceService in-process: the real gRPC front on a loopback port, our own stubs, a fake TorchServe.

tests/test_v2.py drives the same service with Triton's and KServe's own clients against a real TorchServe.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from fake_torchserve import V2FakeTorchServe, version
from servicer_deadlines import time_remaining_around

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE
from fastai_serving_protos import open_inference_pb2 as v2
from fastai_serving_protos import open_inference_pb2_grpc as v2_grpc
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.grpc.v2 import GRPCInferenceService
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings


def serve(fake: V2FakeTorchServe, **settings) -> GrpcFront:
    chosen = Settings(**{"host": "127.0.0.1", "grpc_port": 0, **settings})
    return GrpcFront(chosen, Service(chosen, fake)).start()


@pytest.fixture
def fake() -> V2FakeTorchServe:
    return V2FakeTorchServe(served={"digits": [version("1.0"), version("2.0")], "late": [version("1.0", ready=False)]})


@pytest.fixture
def stub(fake):
    front = serve(fake)
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)
    front.stop(grace_s=0)


def images_request(*images: bytes, model: str = "digits", **fields) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(image)) + image for image in images))
    return request


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)
    return error.value


def test_server_live_and_ready(stub):
    assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live is True
    assert stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready is False  # "late" has no ready worker


def test_server_ready_once_every_model_can_serve():
    front = serve(V2FakeTorchServe())
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        assert v2_grpc.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest(), timeout=10).ready
    front.stop(grace_s=0)


def test_server_ready_is_false_while_the_server_drains(tmp_path):
    drain_file = tmp_path / "draining"
    drain_file.touch()
    front = serve(V2FakeTorchServe(), drain_file=str(drain_file))
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        assert not v2_grpc.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest(), timeout=10).ready
    front.stop(grace_s=0)


def test_model_ready_per_model_and_version(stub):
    assert stub.ModelReady(v2.ModelReadyRequest(name="digits", version="2"), timeout=10).ready is True
    assert stub.ModelReady(v2.ModelReadyRequest(name="late"), timeout=10).ready is False
    assert refused(stub.ModelReady, v2.ModelReadyRequest(name="nope")).code() == grpc.StatusCode.NOT_FOUND


def test_metadata_of_the_server_and_of_a_model(stub):
    server = stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=10)
    assert (server.name, list(server.extensions)) == ("fastai-serving", ["binary_tensor_data"])
    model = stub.ModelMetadata(v2.ModelMetadataRequest(name="digits"), timeout=10)
    assert (model.name, list(model.versions), model.platform) == ("digits", ["1", "2"], "fastai_torchserve")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("image_bytes", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("probabilities", "FP32", [-1, 2])]


def test_raw_images_go_upstream_as_the_images_body_and_come_back_in_raw_output_contents(fake, stub):
    response = stub.ModelInfer(images_request(b"\x89one", b"two", id="q1"), timeout=10)
    ((model, version_sent, body, content_type, timeout_s),) = fake.sent
    assert (model, version_sent, content_type, read_body(body).instances) == (
        "digits", None, IMAGES_CONTENT_TYPE, [b"\x89one", b"two"]
    )  # fmt: skip
    assert (response.model_name, response.model_version, response.id) == ("digits", "1", "q1")
    ((name, datatype, shape),) = [(o.name, o.datatype, list(o.shape)) for o in response.outputs]
    assert (name, datatype, shape) == ("probabilities", "FP32", [2, 2])
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75, 0.25, 0.75]


def test_the_deadline_gRPC_delivered_goes_upstream_never_lengthened(fake, monkeypatch):
    readings = time_remaining_around(monkeypatch, GRPCInferenceService, "ModelInfer")
    front = serve(fake)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(images_request(b"img"), timeout=10)
    finally:
        front.stop(grace_s=0)
    ((*_, timeout_s),) = fake.sent
    before, after = readings
    # What was left of the call's deadline when the front read it: between the servicer's readings around it.
    assert after <= timeout_s <= before


def test_typed_contents_are_read_as_raw_ones_are(fake, stub):
    request = v2.ModelInferRequest(model_name="digits", model_version="2")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"img")
    stub.ModelInfer(request, timeout=10)
    assert (fake.sent[0][1], read_body(fake.sent[0][2]).instances) == ("2.0", [b"img"])


@pytest.mark.parametrize(
    ("request_of", "message"),
    [
        (lambda: v2.ModelInferRequest(model_name="digits"), "the request has no inputs"),
        (lambda: _with_output(images_request(b"x"), "mask"), "requested output 'mask' is not an output of this model"),
        (lambda: _with_shape(images_request(b"x"), [2]), "its binary data ends before element 1 of 2"),
        (lambda: _with_datatype(images_request(b"x"), "FP32"), "binary data is 5"),
        (lambda: _with_parameter(images_request(b"x"), "sequence_id"), "unknown parameter(s) 'sequence_id'"),
    ],
)
def test_a_hostile_request_is_invalid_argument_and_never_goes_upstream(fake, stub, request_of, message):
    error = refused(stub.ModelInfer, request_of())
    assert (error.code(), fake.sent) == (grpc.StatusCode.INVALID_ARGUMENT, [])
    assert message in error.details()


def test_an_unknown_model_is_not_found(stub):
    assert refused(stub.ModelInfer, images_request(b"x", model="nope")).code() == grpc.StatusCode.NOT_FOUND


def _with_output(request: v2.ModelInferRequest, name: str) -> v2.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def _with_shape(request: v2.ModelInferRequest, shape: list[int]) -> v2.ModelInferRequest:
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    return request


def _with_datatype(request: v2.ModelInferRequest, datatype: str) -> v2.ModelInferRequest:
    request.inputs[0].datatype = datatype
    return request


def _with_parameter(request: v2.ModelInferRequest, name: str) -> v2.ModelInferRequest:
    request.parameters[name].int64_param = 3
    return request
