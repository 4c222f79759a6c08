"""The body contract (fastai_serving.contract.bodies, instances, columns, names): every request shape, and the message for each wrong one.

The REST shim, the handler and the gRPC front all read bodies with this module, so these
tests are the one statement of what each front accepts and how it words a refusal.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from fastai_serving.contract.bodies import check_answerable, check_form, read_body
from fastai_serving.contract.columns import CATEGORICAL, CONTINUOUS, INTEGER, NUMBER, STRING, Column
from fastai_serving.contract.errors import BadInput, Failure, NotFound
from fastai_serving.contract.images_wire import images_body
from fastai_serving.contract.instances import image_bytes, read_row, read_text
from fastai_serving.contract.names import check_model_name, check_url_version
from fastai_serving.contract.vocabulary import (
    CLASSIFY,
    COLLAB,
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
    TABULAR,
    TEXT,
    VISION,
)

PNG = b"\x89PNG\r\n\x1a\n-pretend-image"
B64 = base64.b64encode(PNG).decode()


def framed(header: bytes) -> bytes:
    """An images body with this header, as it is (for bodies `images_body` would never write)."""
    return b"\x00fastai-serving images\n" + len(header).to_bytes(4, "big") + header


def images_of(body) -> list[bytes]:
    return [image_bytes(value, body.instance_name(i)) for i, value in enumerate(body.instances)]


def test_the_contract_imports_without_torch_pil_or_numpy():
    modules = "vocabulary, bodies, instances, columns, images_wire, names"
    code = f"import sys; from fastai_serving.contract import {modules}; assert not {{'torch', 'PIL', 'fastai', 'numpy'}} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_raw_image_bytes_are_one_instance():
    body = read_body(PNG)
    assert body.form == RAW and images_of(body) == [PNG] and body.instance_name(0) == "the image"


def test_a_body_handed_over_as_text_is_read_as_its_utf8_bytes():
    body = read_body("Dull and awful, très.")
    assert body.form == RAW and body.instances == ["Dull and awful, très.".encode()]
    assert read_text(body.instances[0], body.instance_name(0, TEXT), 100) == "Dull and awful, très."


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
        ({"inputs": {"a": [], "b": []}}, "'inputs' is empty"),
        ({"inputs": {"a": [1, 2], "b": [3]}}, "must be lists of one length: 'a' has 2 values, 'b' has 1 values"),
        ({"inputs": {"a": [1, 2], "b": 3}}, "must be lists of one length: 'a' has 2 values, 'b' is a number"),
        ({"instances": [{"b64": B64}], "signature_name": 3}, "'signature_name' must be a string"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(BadInput, match=re.escape(message)) as refused:
        read_body(body)
    assert refused.value.failure is Failure.BAD_INPUT


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
    with pytest.raises(NotFound, match="not found: model names are letters") as refused:
        check_model_name(name)
    assert refused.value.failure is Failure.NOT_FOUND


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


# --- Tabular rows, texts, and the forms that carry them --------------------------------------------------

TABLE = [
    Column("colour", CATEGORICAL, STRING, categories=("blue", "red")),
    Column("grade", CATEGORICAL, INTEGER, categories=(1, 2, 3)),
    Column("size", CONTINUOUS, NUMBER, nullable=True),
    Column("weight", CONTINUOUS, NUMBER, nullable=False),
]
ROW = {"colour": "red", "grade": 2, "size": 1.5, "weight": 40}


def test_named_columns_are_read_as_the_rows_they_make():
    body = read_body({"inputs": {"colour": ["red", "blue"], "size": [1.5, None]}})
    assert body.form == COLUMNS
    assert body.instances == [{"colour": "red", "size": 1.5}, {"colour": "blue", "size": None}]


def test_named_inputs_that_are_not_lists_are_one_row():
    assert read_body({"inputs": {"colour": "red", "size": 1.5}}).instances == [{"colour": "red", "size": 1.5}]


def test_one_named_image_column_is_still_a_list_of_images():
    body = read_body({"inputs": {"image_bytes": [{"b64": B64}, {"b64": B64}]}})
    assert images_of(body) == [PNG, PNG]


@pytest.mark.parametrize(
    "document, key, noun",
    [({"text": "so good"}, "text", "the text"), ({"row": ROW}, "row", "the row"), ({"image_bytes": B64}, "image_bytes", "the image")],
)  # fmt: skip
def test_one_instance_shortcuts_name_their_instance_for_their_kind(document, key, noun):
    body = read_body(document)
    kind = {"text": TEXT, "row": TABULAR, "image_bytes": VISION}[key]
    assert body.form == SINGLE and body.shortcut_key == key and body.instance_name(0, kind) == noun
    check_form(kind, body)


@pytest.mark.parametrize(
    "kind, document, message",
    [
        (VISION, {"text": "hi"}, 'this vision model takes {"image_bytes": ...}'),
        (TEXT, {"row": ROW}, 'this text model takes {"text": ...}'),
        (COLLAB, {"image_bytes": B64}, 'this collab model takes {"row": ...}'),
    ],
)
def test_another_kinds_shortcut_is_refused(kind, document, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        check_form(kind, read_body(document))


def test_raw_bytes_are_no_tabular_row():
    with pytest.raises(BadInput, match="this tabular model takes JSON rows"):
        check_form(TABULAR, read_body(b"colour=red"))


def test_a_row_keeps_the_columns_the_model_reads_and_ignores_other_keys():
    row = read_row({**ROW, "grade": 3.0, "note": {"anything": [1]}}, "instance 0", TABLE)
    assert row == {"colour": "red", "grade": 3, "size": 1.5, "weight": 40.0}
    assert isinstance(row["grade"], int)


def test_null_is_a_missing_value_and_an_unseen_category_passes_as_it_came():
    row = read_row({**ROW, "colour": "purple", "grade": None, "size": None}, "instance 0", TABLE)
    assert (row["colour"], row["grade"], row["size"]) == ("purple", None, None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"size": "1.5"}, "instance 4, column 'size' must be a number, not a string"),
        ({"size": False}, "instance 4, column 'size' must be a number, not a boolean"),
        ({"size": float("nan")}, "instance 4, column 'size': nan is not a finite number"),
        ({"size": 10**400}, "instance 4, column 'size': 1000"),
        ({"weight": None}, "instance 4, column 'weight': null (a missing value), but the Learner saw no missing"),
        ({"colour": 3}, "instance 4, column 'colour' must be a string (a category such as 'blue'), not a number"),
        ({"colour": {"name": "red"}}, "instance 4, column 'colour' must be a string (a category such as 'blue'), not an object"),
        ({"grade": 2.5}, "instance 4, column 'grade' must be an integer (a category such as 1), not a number"),
        ({"grade": True}, "instance 4, column 'grade' must be an integer (a category such as 1), not a boolean"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_names_the_instance_and_the_column(change, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        read_row({**ROW, **change}, "instance 4", TABLE)


def test_a_missing_column_names_the_column_and_those_the_model_reads():
    with pytest.raises(BadInput, match=re.escape("instance 2 has no column 'weight' (this model reads 'colour'")):
        read_row({"colour": "red", "grade": 1, "size": 2}, "instance 2", TABLE)


@pytest.mark.parametrize("instance", ["a b c", [1, 2], 7, None])
def test_a_row_must_be_an_object(instance):
    with pytest.raises(BadInput, match="instance 0 must be a row: an object keyed by column name"):
        read_row(instance, "instance 0", TABLE)


def test_a_column_describes_itself_for_the_metadata():
    assert TABLE[0].describe() == {
        "name": "colour", "kind": "categorical", "type": "string", "categories": ["blue", "red"], "nullable": True,
    }  # fmt: skip
    assert TABLE[3].describe() == {"name": "weight", "kind": "continuous", "type": "number", "nullable": False}


@pytest.mark.parametrize("instance", ["so good", {"text": "so good"}, {"text": "so good", "id": 7}, b"so good"])
def test_a_text_is_a_string_a_text_row_or_utf8_bytes(instance):
    assert read_text(instance, "instance 0", 100) == "so good"


@pytest.mark.parametrize(
    "instance, message",
    [
        (7, 'instance 0 must be a text: a string or {"text": "..."}, not a number'),
        ({"review": "good"}, "instance 0 has no 'text'"),
        ({"text": ["good"]}, "instance 0 must be a text"),
        (b"\xff\xfe", "instance 0 is not UTF-8 text"),
        ("x" * 11, "instance 0 is 11 characters long, over the limit of 10"),
        ("bad \ud800", "instance 0 holds a lone UTF-16 surrogate, which is not text"),
    ],
)
def test_an_instance_that_is_no_text_or_too_long_is_named(instance, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        read_text(instance, "instance 0", 10)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(literal):
    with pytest.raises(BadInput, match=f"not valid JSON: {literal.decode()} is not a JSON value"):
        read_body(b'{"instances": [{"size": ' + literal + b"}]}")


def test_an_integer_too_long_for_python_is_bad_json_not_a_crash():
    with pytest.raises(BadInput, match="not valid JSON: Exceeds the limit"):
        read_body(b'{"instances": [{"size": ' + b"9" * 5000 + b"}]}")


def test_numbers_read_as_json_says_with_one_exception_beyond_64_bits():
    """Bodies are parsed with orjson; a body it refuses gets the standard library's verdict (above), and 1e400 is read
    as Python's json reads it (infinity). In a body orjson reads, an integer beyond 64 bits is the nearest float: no
    pandas column (64-bit integers) holds a category it could have matched."""
    numbers = read_body(b'{"instances": [[18446744073709551615, -9223372036854775808, 0.1, 36893488147419103232]]}')
    assert numbers.instances == [[18446744073709551615, -9223372036854775808, 0.1, 36893488147419103232.0]]
    assert isinstance(numbers.instances[0][-1], float)
    assert read_body(b'{"instances": [[1e400]]}').instances == [[float("inf")]]
