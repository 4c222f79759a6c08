"""Decoding image bytes (fastai_serving.engine.images), without any server."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastai_serving.contract.errors import BadInput
from fastai_serving.engine.images import decode_image


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


PIXELS = (np.arange(24 * 24 * 3) % 251).astype(np.uint8).reshape(24, 24, 3)


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.fromarray(PIXELS), "PNG"),
        (Image.fromarray(PIXELS), "JPEG"),
        (Image.fromarray(PIXELS[..., 0]), "PNG"),
        (Image.fromarray(np.dstack([PIXELS, PIXELS[..., :1]])), "PNG"),
        (Image.fromarray(PIXELS).convert("P"), "PNG"),
        (Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257), "PNG"),
        (Image.fromarray(PIXELS).convert("CMYK"), "JPEG"),
        (Image.fromarray(PIXELS), "TIFF"),
    ],
    ids=["rgb-png", "jpeg", "grayscale", "rgba", "palette", "16-bit", "cmyk-jpeg", "tiff"],
)
def test_every_common_image_kind_decodes_to_rgb(image, fmt):
    decoded = decode_image(encoded(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (24, 24)


def test_decoding_matches_fastai_pilimage():
    from fastai.vision.all import PILImage

    data = encoded(Image.fromarray(PIXELS).convert("P"))
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(PILImage.create(data)))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"%PDF-1.4 not an image", "not an image"),
        (encoded(Image.fromarray(PIXELS))[:60], "could not be decoded"),
    ],
    ids=["empty", "pdf", "truncated-png"],
)
def test_bytes_that_are_no_image_are_refused(data, message):
    with pytest.raises(BadInput, match=message):
        decode_image(data, "instance 2")


def test_the_instance_is_named_in_the_error():
    with pytest.raises(BadInput, match="^instance 2 "):
        decode_image(b"garbage", "instance 2")


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(BadInput, match="over the limit"):
        decode_image(png_claiming_size(100_000, 100_000))


def test_the_pixel_limit_is_configurable():
    with pytest.raises(BadInput, match="over the limit of 100 pixels"):
        decode_image(encoded(Image.fromarray(PIXELS)), max_pixels=100)
