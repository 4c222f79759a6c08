"""The v2 REST routes in-process: Flask's test client in front of a fake TorchServe client (no server, no Java).

The fake answers from a table of models and records every call, so these tests show what a v2
request sends upstream (the TF-Serving routes' bodies) and how each answer becomes v2 tensors.
tests/test_v2.py drives the same routes with Triton's and KServe's clients against a real TorchServe.
"""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from fake_torchserve import V2FakeTorchServe as FakeTorchServe
from fake_torchserve import version

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import Failure
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import HandlerError


def client_of(fake: FakeTorchServe, **settings):
    return create_app(Settings(**settings), upstream=fake).test_client()


def binary_request(header: dict, *chunks: bytes) -> dict:
    """The keyword arguments of a POST as tritonclient.http sends it: JSON, then binary tensors."""
    text = json.dumps(header).encode()
    return {
        "data": text + b"".join(chunks),
        "headers": {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"},
    }


def image_input(*images: bytes) -> dict:
    return {"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)],
            "data": [base64.b64encode(image).decode() for image in images]}  # fmt: skip


# --- Health and metadata --------------------------------------------------------------------------


def test_live_has_a_json_body_and_never_asks_torchserve():
    fake = FakeTorchServe()
    response = client_of(fake).get("/v2/health/live")
    assert (response.status_code, response.json, fake.calls) == (200, {"live": True}, [])


def test_ready_is_200_with_a_body_while_every_model_can_serve():
    response = client_of(FakeTorchServe()).get("/v2/health/ready")
    assert (response.status_code, response.json) == (200, {"ready": True})


def test_ready_is_503_while_a_model_has_no_ready_worker():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "late": [version("1.0", ready=False)]})
    response = client_of(fake).get("/v2/health/ready")
    assert (response.status_code, response.json) == (503, {"ready": False})


def test_ready_is_503_while_the_server_drains(tmp_path):
    drain_file = tmp_path / "draining"
    drain_file.touch()
    response = client_of(FakeTorchServe(), drain_file=str(drain_file)).get("/v2/health/ready")
    assert (response.status_code, response.json) == (503, {"ready": False})


def test_server_metadata_names_the_binary_extension():
    body = client_of(FakeTorchServe()).get("/v2").json
    assert body["name"] == "fastai-serving" and body["extensions"] == ["binary_tensor_data"]


def test_model_metadata_declares_the_tensors_and_the_versions():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    body = client_of(fake).get("/v2/models/digits").json
    assert body["versions"] == ["1", "2"] and body["platform"] == "fastai_torchserve"
    assert body["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert body["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert body["fastai"]["classes"] == ["cat", "dog"]


def test_model_metadata_of_a_version_asks_for_that_version():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    assert client_of(fake).get("/v2/models/digits/versions/2").status_code == 200
    assert ("describe", "digits", "2.0") in fake.calls


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope", 404, "model 'nope' not found"),
        ("/v2/models/digits/versions/7", 404, "model 'digits' has no version 7"),
        ("/v2/models/digits/versions/one", 400, "version 'one' is not a number: use /versions/<digits>"),
        ("/v2/models/nope/ready", 404, "model 'nope' not found"),
    ],
)
def test_unknown_models_and_versions_are_json_errors(path, status, message):
    response = client_of(FakeTorchServe()).get(path)
    assert (response.status_code, response.json) == (status, {"error": message})


def test_model_ready_is_200_or_503_with_a_body():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "late": [version("1.0", ready=False)]})
    client = client_of(fake)
    assert client.get("/v2/models/digits/ready").json == {"name": "digits", "ready": True}
    response = client.get("/v2/models/late/versions/1/ready")
    assert (response.status_code, response.json) == (503, {"name": "late", "ready": False})


# --- Inference -------------------------------------------------------------------------------------


def test_json_images_go_upstream_as_the_images_body_and_come_back_as_json_tensors():
    fake = FakeTorchServe()
    response = client_of(fake).post(
        "/v2/models/digits/infer", json={"id": "a1", "inputs": [image_input(b"one", b"two")]}
    )
    assert response.status_code == 200 and response.mimetype == "application/json"
    ((model, version_sent, body, content_type, _),) = fake.sent
    assert (model, version_sent, content_type) == ("digits", None, IMAGES_CONTENT_TYPE)
    assert read_body(body).instances == [b"one", b"two"]
    assert response.json == {
        "model_name": "digits",
        "model_version": "1",
        "id": "a1",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.25, 0.75]}],
    }


def test_a_binary_request_without_outputs_named_is_answered_binary_as_tritonclient_asks():
    image = b"\x89PNG bytes"
    chunk = struct.pack("<I", len(image)) + image
    header = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(chunk)}}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    fake = FakeTorchServe()
    response = client_of(fake).post("/v2/models/digits/infer", **binary_request(header, chunk))
    assert read_body(fake.sent[0][2]).instances == [image]
    length = int(response.headers["Inference-Header-Content-Length"])
    outputs = json.loads(response.data[:length])["outputs"]
    assert outputs == [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    ]
    assert np.frombuffer(response.data[length:], "<f4").tolist() == [0.25, 0.75]


def test_a_version_in_the_url_reaches_torchserves_version():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    client_of(fake).post("/v2/models/digits/versions/2/infer", json={"inputs": [image_input(b"x")]})
    assert fake.sent[0][1] == "2.0"


def test_column_inputs_go_upstream_as_json_rows():
    fake = FakeTorchServe(served={"prices": [version("1.0")]}, kind="tabular")
    inputs = [
        {"name": "colour", "datatype": "BYTES", "shape": [2], "data": ["red", "blue"]},
        {"name": "weight", "datatype": "FP64", "shape": [2], "data": [1.5, None]},
    ]
    response = client_of(fake).post("/v2/models/prices/infer", json={"inputs": inputs})
    assert json.loads(fake.sent[0][2]) == {
        "instances": [{"colour": "red", "weight": 1.5}, {"colour": "blue", "weight": None}]
    }
    assert response.json["outputs"] == [{"name": "values", "datatype": "FP32", "shape": [2, 1], "data": [1.5, 1.5]}]


def test_tritons_timeout_parameter_shortens_the_upstream_deadline():
    fake = FakeTorchServe()
    body = {"parameters": {"timeout": 3_000_000}, "inputs": [image_input(b"x")]}
    client_of(fake).post("/v2/models/digits/infer", json=body)
    assert fake.sent[0][4] == 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {"inputs": [image_input(b"x")], "outputs": [{"name": "mask"}]}},
         "requested output 'mask' is not an output of this model: it has 'probabilities'"),
        ({"data": b'{"inputs": []}', "headers": {"Inference-Header-Content-Length": "500"}},
         "Inference-Header-Content-Length says 500 bytes of JSON, but the body has only 14"),
        ({"json": {"inputs": [{**image_input(b"x"), "datatype": "FP32", "data": [1.0]}]}},
         "input 'image_bytes' is FP32: this model takes BYTES ('image_bytes')"),
        ({"json": {"inputs": [{**image_input(b"x"), "shape": [3]}]}},
         "input 'image_bytes' has shape [3] (3 elements) but holds 1 values"),
        ({"json": {"inputs": [image_input(b"x")], "parameters": {"sequence_id": 4}}},
         "unknown parameter(s) 'sequence_id' on the request: this server reads binary_data_output, timeout, priority"),
        ({"json": {"model_name": "other", "inputs": [image_input(b"x")]}},
         "the request body names model 'other', its URL 'digits'"),
    ],
)  # fmt: skip
def test_a_hostile_request_is_a_400_naming_what_is_wrong_and_never_goes_upstream(kwargs, message):
    fake = FakeTorchServe()
    response = client_of(fake).post("/v2/models/digits/infer", **kwargs)
    assert (response.status_code, response.json, fake.sent) == (400, {"error": message}, [])


def test_the_handlers_own_error_naming_the_instance_passes_through():
    failure = HandlerError("instance 1 is not a decodable image", Failure.BAD_INPUT, "1.0")
    response = client_of(FakeTorchServe(failure=failure)).post(
        "/v2/models/digits/infer", json={"inputs": [image_input(b"a", b"b")]}
    )
    assert (response.status_code, response.json) == (400, {"error": "instance 1 is not a decodable image"})


def test_a_body_over_the_limit_is_a_413():
    response = client_of(FakeTorchServe(), max_body_bytes=100).post(
        "/v2/models/digits/infer", data=b"{" + b" " * 200 + b"}"
    )
    assert response.status_code == 413 and "over the limit of 100 bytes" in response.json["error"]


def test_an_unknown_model_is_a_404_and_never_goes_upstream():
    fake = FakeTorchServe()
    response = client_of(fake).post("/v2/models/nope/infer", json={"inputs": [image_input(b"x")]})
    assert (response.status_code, fake.sent) == (404, [])
