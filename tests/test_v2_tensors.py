"""The v2 tensor codec on hand-made bodies: JSON and binary REST requests, gRPC messages, and answers."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest

from fastai_serving.contract.errors import BadInput
from fastai_serving_protos import open_inference_pb2 as v2
from fastai_serving_shim.protocols.v2_tensors import (
    InferRequest,
    RequestedOutput,
    Tensor,
    raw_bytes,
    read_grpc,
    read_rest,
    write_grpc,
    write_rest,
)


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    """A body as tritonclient sends it: the JSON, then the binary chunks; and the header's value."""
    text = json.dumps(header).encode()
    return text + b"".join(chunks), str(len(text))


def bytes_elements(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def test_a_json_request_reads_its_tensors_flattened_in_row_major_order():
    body = {"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]}]}
    request = read_rest(json.dumps(body).encode(), None)
    assert request.id == "r1"
    assert request.inputs == [Tensor("x", "FP32", (2, 2), [1.0, 2.0, 3.0, 4.5], {}, from_json=True)]
    assert request.outputs == [] and request.binary_output is False


def test_a_binary_request_reads_each_input_from_its_binary_data_size_in_order():
    floats = np.array([0.5, 1.5], dtype="<f4").tobytes()
    images = bytes_elements(b"\x89PNG one", b"two")
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": len(floats)}},
            {"name": "b", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(images)}},
        ],
        "parameters": {"binary_data_output": True},
    }
    request = read_rest(*binary_body(header, floats, images))
    assert [tensor.values for tensor in request.inputs] == [[0.5, 1.5], [b"\x89PNG one", b"two"]]
    assert request.binary_output is True


def test_requested_outputs_keep_their_binary_choice():
    body = {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [3]}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "mask"}],
    }
    request = read_rest(json.dumps(body).encode(), None)
    assert request.outputs == [RequestedOutput("probabilities", True), RequestedOutput("mask", False)]


def test_nan_as_numpy_clients_write_it_is_read_as_a_float():
    body = b'{"inputs": [{"name": "size", "datatype": "FP64", "shape": [2], "data": [NaN, 1.5]}]}'
    (value, other) = read_rest(body, None).inputs[0].values
    assert math.isnan(value) and other == 1.5


def test_kserves_model_name_and_a_triton_timeout_are_read():
    body = {
        "model_name": "digits",
        "parameters": {"timeout": 2_500_000, "priority": 1},
        "inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [True]}],
    }
    request = read_rest(json.dumps(body).encode(), None)
    assert (request.model_name, request.timeout_s) == ("digits", 2.5)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}, "input 'x', element 0: FP32 wants a number, not a string"),
        ({"name": "x", "datatype": "INT64", "shape": [1], "data": [1.5]}, "input 'x', element 0: INT64 wants an integer"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [7]}, "input 'x', element 0: BYTES wants a string"),
        ({"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}, "input 'x' has datatype 'FLOAT'"),
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, "input 'x' has shape [3] (3 elements) but holds 2 values"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "input 'x' has shape [-1]"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}, "input 'x' needs a 'shape'"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "input 'x' has no 'data'"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"colour": "red"}},
         "unknown parameter(s) 'colour' on input 'x'"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "input 0 needs a 'name' (a string)"),
        ({"name": "", "datatype": "FP32", "shape": [1], "data": [1]}, "input 0 has an empty 'name'"),
    ],
)  # fmt: skip
def test_a_json_input_that_disagrees_with_itself_is_refused_naming_it(entry, message):
    with pytest.raises(BadInput, match="^" + re.escape(message)):
        read_rest(json.dumps({"inputs": [entry]}).encode(), None)


def test_an_unknown_request_parameter_is_refused():
    body = {"parameters": {"sequence_id": 3}, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    with pytest.raises(BadInput, match="unknown parameter\\(s\\) 'sequence_id' on the request"):
        read_rest(json.dumps(body).encode(), None)


def test_an_unknown_output_parameter_is_refused():
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    with pytest.raises(BadInput, match="unknown parameter\\(s\\) 'classification' on requested output"):
        read_rest(json.dumps(body).encode(), None)


def test_a_header_length_larger_than_the_body_is_refused():
    body, _ = binary_body({"inputs": []})
    with pytest.raises(BadInput, match=f"says 9999 bytes of JSON, but the body has only {len(body)}"):
        read_rest(body, "9999")


def test_a_header_length_that_is_not_a_number_is_refused():
    with pytest.raises(BadInput, match="Inference-Header-Content-Length must be a byte count"):
        read_rest(b"{}", "ten")


def test_a_binary_data_size_past_the_body_is_refused_naming_the_input():
    header = {"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 500}}]}
    with pytest.raises(
        BadInput, match="input 'img': 'binary_data_size' is 500 bytes, past the end of the body \\(7 bytes"
    ):
        read_rest(*binary_body(header, bytes_elements(b"abc")))


def test_binary_data_left_over_after_the_inputs_is_refused():
    header = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    with pytest.raises(BadInput, match="4 bytes after the inputs' binary data"):
        read_rest(*binary_body(header, struct.pack("<i", 1), b"more"))


def test_binary_data_of_the_wrong_size_for_its_shape_is_refused():
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}]}
    with pytest.raises(BadInput, match="3 FP32 elements are 12 bytes, but its binary data is 8"):
        read_rest(*binary_body(header, b"\x00" * 8))


def test_a_bytes_element_running_past_its_input_is_refused():
    chunk = struct.pack("<I", 100) + b"short"
    header = {
        "inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(chunk)}}]
    }
    with pytest.raises(BadInput, match="input 'img', element 0: 100 bytes, past the end"):
        read_rest(*binary_body(header, chunk))


def test_fewer_bytes_elements_than_the_shape_says_are_refused():
    chunk = bytes_elements(b"one")
    header = {
        "inputs": [{"name": "img", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(chunk)}}]
    }
    with pytest.raises(BadInput, match="input 'img': its binary data ends before element 1 of 2"):
        read_rest(*binary_body(header, chunk))


def test_an_input_with_both_data_and_a_binary_size_is_refused():
    header = {
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1], "parameters": {"binary_data_size": 1}}]
    }
    with pytest.raises(BadInput, match="input 'x' has both 'data' and the parameter 'binary_data_size'"):
        read_rest(*binary_body(header, b"\x01"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body is empty"),
        (b"[1]", "must be a JSON object, not a list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]]}', "not valid JSON"),
        (b'{"inputs": []}', "'inputs' is empty"),
        (b'{"instances": []}', "unexpected key(s) 'instances'"),
        (b'{"id": 3, "inputs": []}', "'id' must be a string"),
    ],
)
def test_a_malformed_request_is_refused(body, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        read_rest(body, None)


def test_an_input_named_twice_is_refused():
    entry = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(BadInput, match="input 'x' appears more than once"):
        read_rest(json.dumps({"inputs": [entry, entry]}).encode(), None)


def answer(binary_output: bool = False, outputs: list[RequestedOutput] | None = None) -> InferRequest:
    return InferRequest(inputs=[], outputs=outputs or [], id="r7", binary_output=binary_output)


PROBABILITIES = Tensor("probabilities", "FP32", (2, 3), [0.25, 0.5, 0.25, 1.0, 0.0, 0.0])


def test_an_answer_is_json_unless_binary_is_asked_for():
    body, header_length = write_rest("digits", "1", answer(), [PROBABILITIES])
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "digits",
        "model_version": "1",
        "id": "r7",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": PROBABILITIES.values}],
    }


def test_a_binary_answer_is_the_json_header_then_the_raw_tensor():
    body, header_length = write_rest("digits", "1", answer(binary_output=True), [PROBABILITIES])
    header = json.loads(body[:header_length])
    assert header["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}
    ]
    assert np.frombuffer(body[header_length:], "<f4").tolist() == PROBABILITIES.values


def test_a_requested_outputs_own_binary_choice_wins_over_the_requests():
    request = answer(binary_output=True, outputs=[RequestedOutput("probabilities", False)])
    body, header_length = write_rest("digits", "1", request, [PROBABILITIES])
    assert header_length is None and json.loads(body)["outputs"][0]["data"] == PROBABILITIES.values


def test_bytes_tensors_round_trip_through_their_binary_form():
    tensor = Tensor("t", "BYTES", (2,), [b"caf\xc3\xa9", b""])
    assert raw_bytes(tensor) == struct.pack("<I", 5) + b"caf\xc3\xa9" + struct.pack("<I", 0)


def grpc_input(name: str, datatype: str, shape: list[int]) -> v2.ModelInferRequest.InferInputTensor:
    return v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def test_a_grpc_request_reads_raw_input_contents_in_the_inputs_order():
    message = v2.ModelInferRequest(model_name="digits", id="g1")
    message.inputs.extend([grpc_input("img", "BYTES", [2]), grpc_input("x", "INT64", [1])])
    message.raw_input_contents.extend([bytes_elements(b"one", b"two"), struct.pack("<q", -4)])
    message.outputs.add(name="probabilities")
    request = read_grpc(message)
    assert [tensor.values for tensor in request.inputs] == [[b"one", b"two"], [-4]]
    assert (request.id, request.model_name, request.outputs) == (
        "g1",
        "digits",
        [RequestedOutput("probabilities", True)],
    )


def test_a_grpc_raw_inputs_binary_data_size_as_kserves_client_sends_it_must_be_its_length():
    message = v2.ModelInferRequest()
    message.inputs.extend([grpc_input("x", "INT64", [1])])
    message.inputs[0].parameters["binary_data_size"].int64_param = 8
    message.raw_input_contents.append(struct.pack("<q", 5))
    assert read_grpc(message).inputs[0].values == [5]
    message.inputs[0].parameters["binary_data_size"].int64_param = 9
    with pytest.raises(BadInput, match="input 'x': 'binary_data_size' is 9 bytes, its raw_input_contents 8"):
        read_grpc(message)


def test_a_grpc_request_reads_typed_contents():
    message = v2.ModelInferRequest()
    tensor = message.inputs.add(name="age", datatype="FP64", shape=[2])
    tensor.contents.fp64_contents.extend([31.0, 47.5])
    assert read_grpc(message).inputs[0].values == [31.0, 47.5]


def test_a_grpc_input_with_an_empty_name_is_refused_as_over_rest():
    message = v2.ModelInferRequest()
    message.inputs.add(name="", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    with pytest.raises(BadInput, match="input 0 has an empty 'name'"):
        read_grpc(message)


def test_grpc_contents_in_another_datatypes_field_are_refused():
    message = v2.ModelInferRequest()
    message.inputs.add(name="age", datatype="FP64", shape=[1]).contents.int64_contents.append(3)
    with pytest.raises(
        BadInput, match="input 'age' is FP64, whose elements go in contents.fp64_contents, not int64_contents"
    ):
        read_grpc(message)


def test_grpc_raw_contents_that_do_not_match_the_inputs_are_refused():
    message = v2.ModelInferRequest()
    message.inputs.extend([grpc_input("a", "FP32", [1]), grpc_input("b", "FP32", [1])])
    message.raw_input_contents.append(struct.pack("<f", 1.0))
    with pytest.raises(BadInput, match="the request has 2 inputs but 1 raw_input_contents"):
        read_grpc(message)


def test_a_grpc_output_parameter_is_refused():
    message = v2.ModelInferRequest()
    message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    message.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    with pytest.raises(BadInput, match="unknown parameter\\(s\\) 'classification' on requested output 'probabilities'"):
        read_grpc(message)


def test_a_grpc_answer_carries_its_tensors_in_raw_output_contents():
    response = v2.ModelInferResponse()
    write_grpc(response, [PROBABILITIES])
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probabilities", "FP32", [2, 3])]
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == PROBABILITIES.values
