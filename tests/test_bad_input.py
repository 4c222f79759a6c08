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
