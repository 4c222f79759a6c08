"""The body contract (fastai_serving.contract): every request shape, and the message for each wrong one.

The REST shim, the handler and the gRPC front all read bodies with this module, so these
tests are the one statement of what each front accepts and how it words a refusal.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from fastai_serving.contract import (
    CLASSIFY,
    COLUMNS,
    EXAMPLES,
    MULTI_LABEL,
    RAW,
    REGRESS,
    REGRESSION,
    ROWS,
    SEGMENTATION,
    SINGLE,
    SINGLE_LABEL,
    check_answerable,
    check_model_name,
    check_url_version,
    image_bytes,
    images_body,
    read_body,
)
from fastai_serving.errors import BadInput

PNG = b"\x89PNG\r\n\x1a\n-pretend-image"
B64 = base64.b64encode(PNG).decode()


def framed(header: bytes) -> bytes:
    """An images body with this header, as it is (for bodies `images_body` would never write)."""
    return b"\x00fastai-serving images\n" + len(header).to_bytes(4, "big") + header


def images_of(body) -> list[bytes]:
    return [image_bytes(value, body.instance_name(i)) for i, value in enumerate(body.instances)]


def test_the_contract_imports_without_torch_or_pil():
    code = "import sys, fastai_serving.contract; assert not {'torch', 'PIL', 'fastai'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_raw_image_bytes_are_one_instance():
    body = read_body(PNG)
    assert body.form == RAW and images_of(body) == [PNG] and body.instance_name(0) == "the image"


def test_the_tf_serving_fronts_take_json_only():
    with pytest.raises(BadInput, match="not valid JSON"):
        read_body(PNG, raw_allowed=False)


@pytest.mark.parametrize("instance", [{"image_bytes": {"b64": B64}}, {"b64": B64}, {"input_1": {"b64": B64}}, B64])
def test_row_form_accepts_named_and_unnamed_b64_instances(instance):
    body = read_body({"instances": [instance, instance]})
    assert body.form == ROWS and images_of(body) == [PNG, PNG] and body.instance_name(1) == "instance 1"


def test_row_form_arrives_as_text_too():
    assert images_of(read_body(f'{{"instances": [{{"b64": "{B64}"}}]}}'.encode())) == [PNG]


@pytest.mark.parametrize("inputs", [{"image_bytes": [{"b64": B64}]}, [{"b64": B64}], {"b64": B64}])
def test_columnar_form_is_read_in_its_three_shapes(inputs):
    body = read_body({"inputs": inputs})
    assert body.form == COLUMNS and images_of(body) == [PNG]


@pytest.mark.parametrize("image", [B64, {"b64": B64}])
def test_one_image_shortcut(image):
    body = read_body({"image_bytes": image})
    assert body.form == SINGLE and images_of(body) == [PNG]


def test_url_safe_and_unpadded_base64_are_accepted():
    text = base64.urlsafe_b64encode(b"\xfb\xff\xfe-abc").decode().rstrip("=")
    assert images_of(read_body({"instances": [{"b64": text}]})) == [b"\xfb\xff\xfe-abc"]


def test_signature_name_is_kept():
    assert read_body({"instances": [{"b64": B64}], "signature_name": "classes"}).signature_name == "classes"


@pytest.mark.parametrize("verb", [CLASSIFY, REGRESS])
def test_classify_and_regress_read_examples(verb):
    body = read_body({"examples": [{"image_bytes": {"b64": B64}}], "context": {}}, verb=verb)
    assert body.form == EXAMPLES and body.verb == verb and images_of(body) == [PNG]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"instances": [', "not valid JSON"),
        ([1, 2], "must be an object"),
        ({"instances": []}, "'instances' is empty"),
        ({"instances": {"b64": B64}}, "'instances' must be a list, not an object"),
        ({"instances": [{"b64": B64}], "inputs": [{"b64": B64}]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"instances": [{"b64": B64}], "extra": 1}, "unexpected key(s) 'extra'"),
        ({"instances": [{"b64": B64}], "examples": [{"b64": B64}]}, "'examples' is the body of :classify"),
        ({"examples": [{"b64": B64}]}, "'examples' is the body of :classify"),
        ({"inputs": {"a": [], "b": []}}, "names 2 inputs"),
        ({"instances": [{"b64": B64}], "signature_name": 3}, "'signature_name' must be a string"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(BadInput, match=re.escape(message)) as refused:
        read_body(body)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "instance, message",
    [
        ({"b64": 42}, "instance 0 must be an image as .*, not a number"),
        ({"b64": "***"}, "instance 0 is not valid base64"),
        ([7], "instance 0 must be an image as .*, not a list"),
    ],
)
def test_an_instance_that_is_no_image_is_named(instance, message):
    body = read_body({"instances": [instance]})
    with pytest.raises(BadInput, match=message):
        images_of(body)


# --- The images body: raw bytes of several images, as the gRPC front sends them upstream ------------


def test_the_images_body_is_read_as_the_row_form_with_its_bytes_as_they_are():
    body = read_body(images_body([PNG, b"\xff\xd8jpeg"], signature_name="classes"))
    assert body.form == ROWS and body.signature_name == "classes"
    assert images_of(body) == [PNG, b"\xff\xd8jpeg"] and body.instance_name(1) == "instance 1"


def test_the_images_body_arrives_as_a_bytearray_from_torchserve():
    assert images_of(read_body(bytearray(images_body([PNG])))) == [PNG]


@pytest.mark.parametrize("verb", [CLASSIFY, REGRESS])
def test_the_images_body_of_classify_and_regress_is_read_as_examples(verb):
    body = read_body(images_body([PNG]), verb=verb)
    assert body.form == EXAMPLES and body.verb == verb and images_of(body) == [PNG]


def test_the_images_body_is_not_taken_by_the_json_fronts():
    with pytest.raises(BadInput, match="not valid JSON"):
        read_body(images_body([PNG]), raw_allowed=False)


@pytest.mark.parametrize(
    "body, message",
    [
        (images_body([]), "holds no image"),
        (images_body([PNG])[:-1], f"holds {len(PNG) - 1} bytes of images, its header says {len(PNG)}"),
        (images_body([PNG]) + b"x", f"holds {len(PNG) + 1} bytes of images, its header says {len(PNG)}"),
        (images_body([PNG])[:24], "cut short"),
        (framed(b"{x"), "header is not valid JSON"),
        (framed(b'{"lengths": "3"}') + b"abc", "needs 'lengths'"),
        (framed(b'{"lengths": [-1]}'), "needs 'lengths'"),
        (framed(b'{"lengths": [], "signature_name": 1}'), "'signature_name' must be a string"),
    ],
)
def test_a_broken_images_body_is_refused_with_the_reason(body, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        read_body(body)


def test_the_images_body_keeps_to_the_instance_limit():
    with pytest.raises(BadInput, match="4 instances in one request, over the limit of 3"):
        read_body(images_body([PNG] * 4), max_instances=3)


def test_classify_without_examples_is_refused():
    with pytest.raises(BadInput, match=":classify takes a body with 'examples'"):
        read_body({"instances": [{"b64": B64}]}, verb=CLASSIFY)


def test_an_unknown_verb_is_refused():
    with pytest.raises(BadInput, match="unknown verb 'explain'"):
        read_body({"instances": [{"b64": B64}]}, verb="explain")


def test_too_many_instances_are_refused():
    with pytest.raises(BadInput, match="4 instances in one request, over the limit of 3"):
        read_body({"instances": [{"b64": B64}] * 4}, max_instances=3)


def test_deeply_nested_json_is_refused_not_crashed():
    with pytest.raises(BadInput):
        read_body(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("name", ["digits", "my-model.v2", "Tiles_2024"])
def test_model_names_torchserve_registers_are_accepted(name):
    check_model_name(name)


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a b", "a%2Fb", "-x", ""])
def test_other_model_names_are_not_found(name):
    with pytest.raises(BadInput, match="not found: model names are letters") as refused:
        check_model_name(name)
    assert refused.value.status == 404


@pytest.mark.parametrize("version", ["latest", "1.0", "-1", ""])
def test_a_url_version_is_digits(version):
    with pytest.raises(BadInput, match="is not a number"):
        check_url_version(version)


@pytest.mark.parametrize(
    "task, body, message",
    [
        (REGRESSION, {"examples": [B64]}, ":classify needs a classifier"),
        (SEGMENTATION, {"instances": [B64], "signature_name": "classes"}, "'classes' needs a classifier"),
        (SINGLE_LABEL, {"instances": [B64], "signature_name": "nope"}, "unknown signature_name 'nope'"),
    ],
)
def test_a_request_the_model_cannot_answer_is_refused_before_inference(task, body, message):
    verb = CLASSIFY if "examples" in body else "predict"
    with pytest.raises(BadInput, match=message):
        check_answerable(task, read_body(body, verb))


def test_regress_needs_a_regression_model():
    with pytest.raises(BadInput, match=":regress needs a regression model; this model does multilabel"):
        check_answerable(MULTI_LABEL, read_body({"examples": [B64]}, REGRESS))
