"""Reading one instance as the model's input kind takes it: image bytes, a tabular row, or a text.

An instance is a JSON value (or raw bytes) until one of these reads it; each refusal names the
instance (`where`: "instance 3", "the image") so a client knows which one to fix.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from .columns import Column
from .errors import BadInput, json_type
from .vocabulary import IMAGE_INPUT, TEXT_INPUT


def image_bytes(instance: Any, where: str) -> bytes:
    """The image bytes of one instance: `{"b64": s}`, `{"<input name>": {"b64": s}}`, a b64 string, or raw bytes."""
    if isinstance(instance, (bytes, bytearray)):
        return bytes(instance)
    if isinstance(instance, dict) and len(instance) > 1 and "b64" not in instance:
        names = ", ".join(map(repr, list(instance)[:4])) + (", ..." if len(instance) > 4 else "")
        raise BadInput(f"{where} names {len(instance)} inputs ({names}); this model takes one image input")
    if isinstance(instance, dict) and len(instance) == 1 and "b64" not in instance:
        (instance,) = instance.values()
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        instance = instance["b64"]
    if not isinstance(instance, str):
        raise BadInput(
            f'{where} must be an image as {{"b64": "<base64>"}} or '
            f'{{"{IMAGE_INPUT}": {{"b64": "<base64>"}}}}, not {json_type(instance)}'
        )
    return decode_base64(instance, where)


def decode_base64(text: str, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional, nothing else: what shim/rest/openapi.yaml's Base64Image says."""
    text = text.strip()
    data = text.rstrip("=")
    if len(text) - len(data) > -len(data) % 4:  # more padding than the last group needs (base64 allows none)
        raise BadInput(f"{where} is not valid base64")
    padded = data + "=" * (-len(data) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadInput(f"{where} is not valid base64") from None


def read_row(instance: Any, where: str, columns: Sequence[Column]) -> dict[str, Any]:
    """A tabular row: each column the Learner needs, checked; other keys are ignored."""
    if not isinstance(instance, dict):
        raise BadInput(f"{where} must be a row: an object keyed by column name, not {json_type(instance)}")
    row = {}
    for column in columns:
        if column.name not in instance:
            names = ", ".join(repr(c.name) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise BadInput(f"{where} has no column {column.name!r} (this model reads {names})")
        row[column.name] = column.read(instance[column.name], where)
    return row


def read_text(instance: Any, where: str, max_chars: int) -> str:
    """A text: a string, `{"text": "..."}`, or raw UTF-8 bytes; at most `max_chars` characters."""
    text = instance
    if isinstance(instance, dict):
        if TEXT_INPUT not in instance:
            raise BadInput(f'{where} has no {TEXT_INPUT!r}: send a string or {{"{TEXT_INPUT}": "..."}}')
        text = instance[TEXT_INPUT]
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{where} is not UTF-8 text") from None
    if not isinstance(text, str):
        raise BadInput(f'{where} must be a text: a string or {{"{TEXT_INPUT}": "..."}}, not {json_type(text)}')
    if len(text) > max_chars:
        raise BadInput(f"{where} is {len(text)} characters long, over the limit of {max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" escape: a lone surrogate no tokenizer can read
        raise BadInput(f"{where} holds a lone UTF-16 surrogate, which is not text") from None
    return text
