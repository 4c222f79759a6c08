"""A model's v2 tensors, on hand-made requests: the metadata per Learner kind, the handler's bodies, the outputs."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import BadInput
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE
from fastai_serving_shim.calls import Description
from fastai_serving_shim.protocols.v2_model import check_outputs, metadata, model_tensors, output_tensors, upstream_body
from fastai_serving_shim.protocols.v2_tensors import InferRequest, RequestedOutput, Tensor

IMAGE = {"task": "classification", "kind": "vision", "classes": ["cat", "dog"], "inputs": [{"name": "image_bytes"}]}
TEXT = {"task": "multilabel_classification", "kind": "text", "classes": ["a", "b", "c"]}
SEGMENTER = {"task": "segmentation", "kind": "vision", "classes": ["background", "road"]}
COLUMNS = [
    {"name": "colour", "kind": "categorical", "type": "string", "categories": ["blue", "red"], "nullable": True},
    {"name": "doors", "kind": "categorical", "type": "integer", "categories": [2, 4], "nullable": True},
    {"name": "weight", "kind": "continuous", "type": "number", "nullable": True},
]
TABULAR = {"task": "regression", "kind": "tabular", "classes": [], "targets": ["price"], "inputs": COLUMNS}


def request_of(*inputs: Tensor, outputs: tuple[str, ...] = ()) -> InferRequest:
    return InferRequest(inputs=list(inputs), outputs=[RequestedOutput(name, True) for name in outputs])


def test_an_image_model_declares_one_bytes_input_and_its_class_probabilities():
    described = metadata(Description("cats", "1", ("1",), IMAGE))
    assert described["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert described["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert (described["name"], described["versions"], described["fastai"]["classes"]) == ("cats", ["1"], ["cat", "dog"])


def test_a_text_model_declares_a_bytes_input_and_multi_label_scores():
    tensors = model_tensors(TEXT)
    assert [spec.describe() for spec in tensors.inputs] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [spec.describe() for spec in tensors.outputs] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]


def test_a_segmenter_declares_an_int64_mask():
    (output,) = model_tensors(SEGMENTER).outputs
    assert output.describe() == {"name": "mask", "datatype": "INT64", "shape": [-1, -1, -1]}


def test_a_tabular_model_declares_one_input_per_column_typed_as_mlservers_pandas_codec():
    tensors = model_tensors(TABULAR)
    assert [spec.describe() for spec in tensors.inputs] == [
        {"name": "colour", "datatype": "BYTES", "shape": [-1]},
        {"name": "doors", "datatype": "INT64", "shape": [-1]},
        {"name": "weight", "datatype": "FP32", "shape": [-1]},
    ]
    assert [spec.describe() for spec in tensors.outputs] == [{"name": "values", "datatype": "FP32", "shape": [-1, 1]}]


def test_binary_images_become_the_images_body_the_grpc_front_sends():
    body, content_type = upstream_body(model_tensors(IMAGE), request_of(Tensor("any", "BYTES", (2,), [b"\x89a", b"b"])))
    assert content_type == IMAGES_CONTENT_TYPE
    assert read_body(body).instances == [b"\x89a", b"b"]


def test_json_images_are_base64_strings():
    encoded = base64.b64encode(b"\x89PNG").decode()
    tensor = Tensor("image_bytes", "BYTES", (1, 1), [encoded.encode()], from_json=True)
    body, _ = upstream_body(model_tensors(IMAGE), request_of(tensor))
    assert read_body(body).instances == [b"\x89PNG"]


def test_a_json_image_that_is_not_base64_is_refused_naming_the_instance():
    tensor = Tensor("image_bytes", "BYTES", (2,), [b"aGk=", b"not base64!"], from_json=True)
    with pytest.raises(BadInput, match="input 'image_bytes', instance 1 is not valid base64"):
        upstream_body(model_tensors(IMAGE), request_of(tensor))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ((Tensor("image_bytes", "FP32", (1,), [1.0]),), "input 'image_bytes' is FP32: this model takes BYTES"),
        ((Tensor("image_bytes", "BYTES", (1, 2), [b"a", b"b"]),), "input 'image_bytes' has shape [1, 2]: send [n]"),
        ((Tensor("image_bytes", "BYTES", (0,), []),), "input 'image_bytes' holds no instance"),
        ((Tensor("a", "BYTES", (1,), [b"a"]), Tensor("b", "BYTES", (1,), [b"b"])), "this model takes one input"),
        (
            (Tensor("image_bytes", "BYTES", (1,), [b"a"], {"content_type": "np"}),),
            "input 'image_bytes': content_type 'np' is not one",
        ),
    ],
)
def test_image_inputs_of_the_wrong_kind_are_refused(inputs, message):
    with pytest.raises(BadInput, match="^" + re.escape(message)):
        upstream_body(model_tensors(IMAGE), request_of(*inputs))


def test_texts_become_the_json_rows_the_tf_serving_routes_send():
    tensor = Tensor("text", "BYTES", (2,), ["caf\u00e9".encode(), b"fine"])
    body, content_type = upstream_body(model_tensors(TEXT), request_of(tensor))
    assert (json.loads(body), content_type) == ({"instances": ["caf\u00e9", "fine"]}, "application/json")


def test_a_text_that_is_not_utf8_is_refused_naming_the_instance():
    with pytest.raises(BadInput, match="input 'text', instance 0 is not UTF-8 text"):
        upstream_body(model_tensors(TEXT), request_of(Tensor("text", "BYTES", (1,), [b"\xff\xfe"])))


def columns(colour=("red", "blue"), doors=(2, 4), weight=(1.5, math.nan), weight_type="FP64") -> list[Tensor]:
    return [
        Tensor("colour", "BYTES", (len(colour),), [value.encode() for value in colour]),
        Tensor("doors", "INT64", (len(doors),), list(doors)),
        Tensor("weight", weight_type, (len(weight),), list(weight)),
    ]


def test_column_inputs_become_rows_with_nan_as_a_missing_value():
    body, _ = upstream_body(model_tensors(TABULAR), request_of(*columns()))
    assert json.loads(body) == {
        "instances": [{"colour": "red", "doors": 2, "weight": 1.5}, {"colour": "blue", "doors": 4, "weight": None}]
    }


def test_inputs_that_are_not_columns_are_ignored_as_in_json_rows():
    extra = Tensor("price", "FP32", (2,), [1.0, 2.0])
    body, _ = upstream_body(model_tensors(TABULAR), request_of(*columns(), extra))
    assert "price" not in json.loads(body)["instances"][0]


def test_a_missing_column_input_is_refused_naming_it():
    with pytest.raises(BadInput, match="the request has no input 'weight': this model takes one input per column"):
        upstream_body(model_tensors(TABULAR), request_of(*columns()[:2]))


def test_column_inputs_of_different_lengths_are_refused():
    with pytest.raises(BadInput, match="one value per row, as many each: 'colour' has 2, 'doors' has 3"):
        upstream_body(model_tensors(TABULAR), request_of(*columns(doors=(2, 4, 2))))


def test_a_column_of_the_wrong_datatype_is_refused_naming_the_column():
    wrong = [Tensor("colour", "INT64", (2,), [1, 2]), *columns()[1:]]
    with pytest.raises(
        BadInput, match="input 'colour' is INT64: column 'colour' is BYTES \\(its categories are strings\\)"
    ):
        upstream_body(model_tensors(TABULAR), request_of(*wrong))


def test_an_infinite_continuous_value_is_refused_naming_the_instance():
    with pytest.raises(BadInput, match="input 'weight', instance 1: inf is not a finite number"):
        upstream_body(model_tensors(TABULAR), request_of(*columns(weight=(1.0, math.inf))))


def test_a_requested_output_the_model_lacks_is_refused_before_inference():
    with pytest.raises(
        BadInput, match="requested output 'mask' is not an output of this model: it has 'probabilities'"
    ):
        check_outputs(model_tensors(IMAGE), request_of(outputs=("mask",)))


def test_the_handlers_predictions_become_the_output_tensor():
    (output,) = output_tensors(model_tensors(IMAGE), request_of(), {"predictions": [[0.25, 0.75], [1.0, 0.0]]})
    assert (output.name, output.datatype, output.shape, output.values) == (
        "probabilities", "FP32", (2, 2), [0.25, 0.75, 1.0, 0.0]
    )  # fmt: skip


def test_one_value_per_instance_is_still_a_matrix():
    (output,) = output_tensors(model_tensors(TABULAR), request_of(), {"predictions": [1.5, 2.5]})
    assert output.shape == (2, 1)


def test_masks_are_int64_images():
    (output,) = output_tensors(model_tensors(SEGMENTER), request_of(), {"predictions": [[[0, 1], [1, 1]]]})
    assert (output.datatype, output.shape, output.values) == ("INT64", (1, 2, 2), [0, 1, 1, 1])


def test_masks_of_different_sizes_in_one_request_are_refused():
    with pytest.raises(BadInput, match="differ in shape"):
        output_tensors(model_tensors(SEGMENTER), request_of(), {"predictions": [[[0, 1]], [[0]]]})
