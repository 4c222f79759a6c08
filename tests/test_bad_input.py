"""Hostile and odd inputs through the shim: each gets its documented status, and the server keeps serving.

Error bodies are {"error": ...} and carry no stack trace or server path.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.e2e

PIXELS = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few-hundred-byte PNG whose header claims 10 gigapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    return encoded(Image.fromarray(PIXELS), "JPEG", exif=exif.tobytes())


def instances_body(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(i).decode()}} for i in images]}).encode()


def png() -> bytes:
    return encoded(Image.fromarray(PIXELS))


# Each body is built by its test (a lambda here), so collecting the tests builds none of them.
HOSTILE = {
    "empty body": (lambda: b"", 400),
    "invalid JSON": (lambda: b'{"instances": [{"b64": ', 400),
    "JSON string": (lambda: b'"instances"', 400),
    "JSON number": (lambda: b"42", 400),
    "instances not a list": (lambda: b'{"instances": {"b64": "aGk="}}', 400),
    "instance a number": (lambda: b'{"instances": [7]}', 400),
    "b64 a number": (lambda: b'{"instances": [{"b64": 7}]}', 400),
    "deeply nested JSON": (lambda: b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    "wrong keys": (lambda: b'{"images": [{"b64": "aGk="}]}', 400),
    "base64 that does not decode": (lambda: b'{"instances": [{"b64": "!!not*base64!!"}]}', 400),
    "zero bytes": (lambda: instances_body(b""), 400),
    "truncated PNG": (lambda: instances_body(png()[: len(png()) // 2]), 400),
    "a PDF": (lambda: instances_body(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF"), 400),
    "decompression bomb": (lambda: instances_body(bomb_png()), 400),
    "thousands of instances": (lambda: instances_body(*[png()] * 3000), 400),
    "body over the size limit": (lambda: b'{"instances": [{"b64": "' + b"A" * (65 * 1024 * 1024) + b'"}]}', 413),
}

ODD_BUT_VALID = {
    "grayscale": lambda: encoded(Image.fromarray(PIXELS[..., 0])),
    "RGBA": lambda: encoded(Image.fromarray(np.dstack([PIXELS, PIXELS[..., :1]]))),
    "palette": lambda: encoded(Image.fromarray(PIXELS).convert("P")),
    "16-bit": lambda: encoded(Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257)),
    "CMYK JPEG": lambda: encoded(Image.fromarray(PIXELS).convert("CMYK"), "JPEG"),
    "EXIF-rotated JPEG": exif_rotated_jpeg,
    "1x1 pixel": lambda: encoded(Image.new("RGB", (1, 1), "white")),
    "4000x3000 photo-sized JPEG": lambda: encoded(Image.new("RGB", (4000, 3000), "gray"), "JPEG"),
}


def assert_clean_error(response: requests.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}
    for leak in ("Traceback", 'File "', "/work/", ".py", "site-packages"):
        assert leak not in body["error"], body["error"]


def assert_still_serving(torchserve, demo_model) -> None:
    image = (demo_model / "samples" / "3.png").read_bytes()
    response = requests.post(f"{torchserve.shim}/analyze:predict", data=instances_body(image), timeout=60)
    assert response.status_code == 200 and int(np.argmax(response.json()["predictions"][0])) == 3


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_gets_its_status_and_the_server_keeps_serving(torchserve, demo_model, name):
    build_body, status = HOSTILE[name]
    response = requests.post(f"{torchserve.shim}/analyze:predict", data=build_body(), timeout=120)
    assert response.status_code == status, response.text[:300]
    assert_clean_error(response)
    assert_still_serving(torchserve, demo_model)


@pytest.mark.parametrize("name", list(ODD_BUT_VALID))
def test_odd_but_valid_images_are_answered(torchserve, demo_model, name):
    response = requests.post(
        f"{torchserve.shim}/analyze:predict", data=instances_body(ODD_BUT_VALID[name]()), timeout=60
    )
    assert response.status_code == 200, response.text[:300]
    (probabilities,) = response.json()["predictions"]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_torchserve_refuses_an_oversize_body_too(torchserve):
    too_big = b"{" + b" " * (65 * 1024 * 1024) + b"}"
    try:
        outcome = requests.post(
            f"{torchserve.inference}/predictions/digits",
            data=too_big,
            headers={"Content-Type": "application/json"},
            timeout=60,
        ).status_code
    except requests.ConnectionError:
        outcome = "closed"  # TorchServe may close the connection while the body is still arriving
    assert outcome in (413, "closed")


# --- Tabular and text models ------------------------------------------------------------------------------

ROW = {"colour": "red", "shape": "round", "grade": 3, "size": 11.5, "weight": 52.0}
MANY_COLUMNS = {f"column_{i}": i for i in range(100_000)}


def rows_body(*rows) -> bytes:
    return json.dumps({"instances": list(rows)}).encode()


def with_value(column: str, raw_json: bytes) -> bytes:
    """A one-row body whose `column` holds `raw_json` as it is (not necessarily valid JSON)."""
    row = json.dumps({key: value for key, value in ROW.items() if key != column})
    return b'{"instances": [' + row[:-1].encode() + b', "' + column.encode() + b'": ' + raw_json + b"}]}"


# (model, body, status, what the error says). Built by each test, as above.
HOSTILE_ROWS_AND_TEXTS = {
    "row: deeply nested value": ("tabular_regressor", lambda: with_value("size", b"[" * 50_000 + b"]" * 50_000), 400, "not valid JSON"),
    "row: NaN literal": ("tabular_regressor", lambda: with_value("size", b"NaN"), 400, "NaN is not a JSON value"),
    "row: Infinity literal": ("tabular_regressor", lambda: with_value("weight", b"Infinity"), 400, "Infinity is not a JSON value"),
    "row: -Infinity literal": ("tabular_regressor", lambda: with_value("weight", b"-Infinity"), 400, "-Infinity is not a JSON value"),
    "row: number past float range": ("tabular_regressor", lambda: with_value("size", b"1e999"), 400, "column 'size': inf is not a finite number"),
    "row: integer of 5000 digits": ("tabular_regressor", lambda: with_value("size", b"9" * 5000), 400, "not valid JSON"),
    "row: 10 MB string for a number": ("tabular_regressor", lambda: rows_body({**ROW, "size": "9" * 10_000_000}), 400, "column 'size' must be a number, not a string"),
    "row: object for a category": ("tabular_regressor", lambda: rows_body({**ROW, "colour": {"b64": "aGk="}}), 400, "column 'colour' must be a string"),
    "row: a list, not an object": ("tabular_regressor", lambda: rows_body(list(ROW.values())), 400, "instance 0 must be a row"),
    "row: an image, not a row": ("tabular_regressor", lambda: rows_body({"b64": "aGk="}), 400, "instance 0 has no column 'colour'"),
    "row: 100k columns, none of them the model's": ("tabular_regressor", lambda: rows_body(MANY_COLUMNS), 400, "instance 0 has no column 'colour'"),
    "columns: 100k named inputs, none the model's": ("tabular_regressor", lambda: json.dumps({"inputs": {k: [v] for k, v in MANY_COLUMNS.items()}}).encode(), 400, "has no column 'colour'"),
    "columns: lengths that differ": ("tabular_regressor", lambda: json.dumps({"inputs": {"colour": ["red"], "size": [1, 2]}}).encode(), 400, "lists of one length"),
    "rows: 3,000 of them": ("tabular_regressor", lambda: rows_body(*[ROW] * 3000), 400, "3000 instances in one request, over the limit of 1024"),
    "text: 10 MB": ("text_multilabel", lambda: json.dumps({"instances": ["word " * 2_000_000]}).encode(), 400, "10000000 characters long, over the limit of 10000"),
    "text: deeply nested": ("text_multilabel", lambda: b'{"instances": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", 400, "not valid JSON"),
    "text: NaN literal": ("text_multilabel", lambda: b'{"instances": [NaN]}', 400, "NaN is not a JSON value"),
    "text: a number": ("text_multilabel", lambda: b'{"instances": ["fine", 42]}', 400, "instance 1 must be a text"),
    "text: an object without text": ("text_multilabel", lambda: b'{"instances": [{"review": "good"}]}', 400, "instance 0 has no 'text'"),
    "text: a lone surrogate": ("text_multilabel", lambda: b'{"instances": ["bad \\ud800 film"]}', 400, "lone UTF-16 surrogate"),
    "text: bytes that are not UTF-8": ("text_multilabel", lambda: b'{"instances": ["\xff\xfe"]}', 400, "not valid JSON"),
}  # fmt: skip


def assert_tabular_and_text_still_serve(torchserve) -> None:
    for model, body in (("tabular_regressor", rows_body(ROW)), ("text_multilabel", b'{"instances": ["a great film"]}')):
        response = requests.post(f"{torchserve.shim}/v1/models/{model}:predict", data=body, timeout=60)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 1


@pytest.mark.parametrize("name", list(HOSTILE_ROWS_AND_TEXTS))
def test_hostile_rows_and_texts_get_a_400_saying_why_and_the_server_keeps_serving(torchserve, name):
    model, build_body, status, message = HOSTILE_ROWS_AND_TEXTS[name]
    response = requests.post(f"{torchserve.shim}/v1/models/{model}:predict", data=build_body(), timeout=120)
    assert response.status_code == status, response.text[:300]
    assert_clean_error(response)
    assert message in response.json()["error"], response.json()["error"][:300]
    assert_tabular_and_text_still_serve(torchserve)


def test_a_row_with_100k_columns_besides_its_own_is_answered_as_the_row_alone(torchserve):
    url = f"{torchserve.shim}/v1/models/tabular_regressor:predict"
    alone = requests.post(url, data=rows_body(ROW), timeout=60).json()["predictions"]
    crowded = requests.post(url, data=rows_body({**MANY_COLUMNS, **ROW}), timeout=120)
    assert crowded.status_code == 200 and crowded.json()["predictions"] == alone


def test_a_10_mb_category_is_read_as_any_category_never_seen(torchserve):
    url = f"{torchserve.shim}/v1/models/tabular_regressor:predict"
    unseen = requests.post(url, data=rows_body({**ROW, "colour": "purple"}), timeout=60).json()["predictions"]
    huge = requests.post(url, data=rows_body({**ROW, "colour": "x" * 10_000_000}), timeout=120)
    assert huge.status_code == 200 and huge.json()["predictions"] == unseen
