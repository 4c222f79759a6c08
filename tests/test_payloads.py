"""Reading request bodies into instances (fastai_serving.payloads), without any server."""

from __future__ import annotations

import base64

import pytest

from fastai_serving.errors import BadInput
from fastai_serving.payloads import CLASSIFY, COLUMNS, EXAMPLES, RAW, ROWS, SINGLE, read_payload

PNG = b"\x89PNG\r\n\x1a\n-pretend-image"
B64 = base64.b64encode(PNG).decode()


def test_raw_image_bytes_are_one_instance():
    payload = read_payload(PNG)
    assert payload.form == RAW and payload.instances == [PNG]


@pytest.mark.parametrize("instance", [{"image_bytes": {"b64": B64}}, {"b64": B64}, {"input_1": {"b64": B64}}])
def test_row_form_accepts_named_and_unnamed_b64_instances(instance):
    payload = read_payload({"instances": [instance, instance]})
    assert payload.form == ROWS and payload.instances == [PNG, PNG]


def test_row_form_arrives_as_text_too():
    payload = read_payload(f'{{"instances": [{{"b64": "{B64}"}}]}}'.encode())
    assert payload.instances == [PNG]


@pytest.mark.parametrize("inputs", [{"image_bytes": [{"b64": B64}]}, [{"b64": B64}], {"b64": B64}])
def test_columnar_form_is_read_in_its_three_shapes(inputs):
    payload = read_payload({"inputs": inputs})
    assert payload.form == COLUMNS and payload.instances == [PNG]


@pytest.mark.parametrize("image", [B64, {"b64": B64}])
def test_one_image_shortcut(image):
    payload = read_payload({"image_bytes": image})
    assert payload.form == SINGLE and payload.instances == [PNG]


def test_url_safe_and_unpadded_base64_are_accepted():
    text = base64.urlsafe_b64encode(b"\xfb\xff\xfe-abc").decode().rstrip("=")
    assert read_payload({"instances": [{"b64": text}]}).instances == [b"\xfb\xff\xfe-abc"]


def test_signature_name_is_kept():
    assert read_payload({"instances": [{"b64": B64}], "signature_name": "classes"}).signature_name == "classes"


def test_classify_reads_examples():
    payload = read_payload({"examples": [{"image_bytes": {"b64": B64}}], "context": {}}, verb=CLASSIFY)
    assert payload.form == EXAMPLES and payload.instances == [PNG]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"instances": [', "not valid JSON"),
        ([1, 2], "must be an object"),
        ({"instances": []}, "empty"),
        ({"instances": {"b64": B64}}, "must be a list"),
        ({"instances": [{"b64": B64}], "inputs": [{"b64": B64}]}, "exactly one"),
        ({}, "exactly one"),
        ({"instances": [{"b64": B64}], "extra": 1}, "unexpected key"),
        ({"instances": [{"b64": 42}]}, "instance 0"),
        ({"instances": [{"b64": B64}, {"b64": "***"}]}, "instance 1 is not valid base64"),
        ({"inputs": {"a": [], "b": []}}, "names 2 inputs"),
        ({"instances": [{"b64": B64}], "signature_name": 3}, "signature_name"),
        ({"examples": [{"b64": B64}]}, "exactly one"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(BadInput, match=message):
        read_payload(body)


def test_classify_without_examples_is_refused():
    with pytest.raises(BadInput, match="examples"):
        read_payload({"instances": [{"b64": B64}]}, verb=CLASSIFY)


def test_too_many_instances_are_refused():
    with pytest.raises(BadInput, match="over the limit of 3"):
        read_payload({"instances": [{"b64": B64}] * 4}, max_instances=3)


def test_deeply_nested_json_is_refused_not_crashed():
    with pytest.raises(BadInput):
        read_payload(b"[" * 100_000 + b"]" * 100_000)
