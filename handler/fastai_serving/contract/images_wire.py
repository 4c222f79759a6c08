"""The images body: several images' bytes in one request, with no base64 and no JSON around them.

The gRPC front sends it upstream (its clients send images as bytes already); the handler reads it
as the row form. The frame: a signature (no JSON or image starts with a NUL byte), the length of a
JSON header as 4 bytes big-endian, the header {"signature_name": ..., "lengths": [...]}, then the images.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from .errors import BadInput, json_type

IMAGES_BODY_SIGNATURE = b"\x00fastai-serving images\n"
IMAGES_CONTENT_TYPE = "application/octet-stream"  # TorchServe hands such a body to the handler as bytes
_HEADER_LENGTH = struct.Struct(">I")


def images_body(images: Sequence[bytes], signature_name: str = "") -> bytes:
    """Several images' bytes as one body (the gRPC front's upstream form)."""
    header = json.dumps({"signature_name": signature_name, "lengths": [len(image) for image in images]}).encode()
    return b"".join([IMAGES_BODY_SIGNATURE, _HEADER_LENGTH.pack(len(header)), header, *images])


def is_images_body(body: bytes | bytearray) -> bool:
    return body.startswith(IMAGES_BODY_SIGNATURE)


def read_images_body(body: bytes | bytearray, max_instances: int | None = None) -> tuple[str, list[bytes]]:
    """An images body's signature_name and its images, in order; `BadInput` names what is wrong with the frame."""
    view = memoryview(body)[len(IMAGES_BODY_SIGNATURE) :]
    if len(view) < _HEADER_LENGTH.size:
        raise BadInput("the images body is cut short: no header")
    (header_length,) = _HEADER_LENGTH.unpack(view[: _HEADER_LENGTH.size])
    start = _HEADER_LENGTH.size + header_length
    try:
        header = json.loads(bytes(view[_HEADER_LENGTH.size : start]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput("the images body's header is not valid JSON") from None
    lengths = header.get("lengths") if isinstance(header, dict) else None
    signature_name = header.get("signature_name", "") if isinstance(header, dict) else None
    if not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise BadInput("the images body's header needs 'lengths', a list of byte counts")
    if not isinstance(signature_name, str):
        raise BadInput(f"'signature_name' must be a string, not {json_type(signature_name)}")
    if sum(lengths) != len(view) - start:
        raise BadInput(f"the images body holds {len(view) - start} bytes of images, its header says {sum(lengths)}")
    if not lengths:
        raise BadInput("the request holds no image: send at least one instance")
    if max_instances is not None and len(lengths) > max_instances:
        raise BadInput(f"{len(lengths)} instances in one request, over the limit of {max_instances}")
    images, offset = [], start
    for length in lengths:
        images.append(bytes(view[offset : offset + length]))
        offset += length
    return signature_name, images
