"""Read one request body into its instances: the TF-Serving JSON forms and raw image bytes.

The forms (DESIGN.md, "API contract"):
- raw image bytes, as `curl -T tile.png` sends: one instance, answered as one prediction;
- `{"instances": [{"image_bytes": {"b64": ...}}, ...]}`, also `{"b64": ...}` rows and named
  inputs: the row form, answered `{"predictions": [...]}`;
- `{"inputs": {"image_bytes": [...]}}` or `{"inputs": [...]}`: the columnar form, answered
  `{"outputs": [...]}`;
- `{"image_bytes": "<b64>"}` or `{"image_bytes": {"b64": ...}}`: one image, answered
  `{"prediction": ...}`;
- `{"examples": [...]}`: the body of TF Serving's `:classify` and `:regress` verbs.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from .errors import BadInput

PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
VERBS = (PREDICT, CLASSIFY, REGRESS)

RAW, SINGLE, ROWS, COLUMNS, EXAMPLES = "raw", "single", "rows", "columns", "examples"

DEFAULT_MAX_INSTANCES = 1024

_SINGLE_IMAGE_KEY = "image_bytes"
_OPTIONAL_KEYS = {"signature_name", "context"}


@dataclass(frozen=True)
class Payload:
    """What one request asks for: its images' bytes, in order, and how to answer."""

    form: str
    instances: list[bytes]
    verb: str = PREDICT
    signature_name: str = ""


def read_payload(body: Any, verb: str = PREDICT, max_instances: int = DEFAULT_MAX_INSTANCES) -> Payload:
    """Turn a request body (bytes, text, or JSON already parsed) into a `Payload`."""
    if verb not in VERBS:
        raise BadInput(f"unknown verb {verb!r}: expected one of {', '.join(VERBS)}")
    document = _as_json_document(body)
    if document is None:
        if verb != PREDICT:
            raise BadInput(f":{verb} takes a JSON body with 'examples'")
        return Payload(form=RAW, instances=[bytes(body)])
    if not isinstance(document, dict):
        raise BadInput(f"the JSON body must be an object, not {_json_type(document)}")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise BadInput("'signature_name' must be a string")
    form, values = _form_of(document, verb)
    if len(values) > max_instances:
        raise BadInput(f"{len(values)} instances in one request, over the limit of {max_instances}")
    instances = [_image_bytes(value, f"instance {index}") for index, value in enumerate(values)]
    return Payload(form=form, instances=instances, verb=verb, signature_name=signature_name)


def _as_json_document(body: Any) -> Any:
    """The body as a JSON value, or None when it is raw (image) bytes."""
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):
        raise BadInput("the request has no body")
    if not body.strip():
        raise BadInput("the request body is empty")
    if body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BadInput(f"the body is not valid JSON: {error}") from None


def _form_of(document: dict[str, Any], verb: str) -> tuple[str, list[Any]]:
    """Which body form `document` is, and its instance values in order."""
    present = [key for key in ("instances", "inputs", "examples", _SINGLE_IMAGE_KEY) if key in document]
    unknown = sorted(set(document) - set(present) - _OPTIONAL_KEYS)
    if unknown:
        raise BadInput(f"unexpected key(s) {', '.join(map(repr, unknown))} in the request body")
    if verb != PREDICT:
        if present != ["examples"]:
            raise BadInput(f":{verb} takes a body with 'examples' (and optional 'context', 'signature_name')")
        return EXAMPLES, _non_empty_list(document["examples"], "examples")
    if len(present) != 1 or present == ["examples"]:
        raise BadInput(
            "the body must have exactly one of 'instances' (row form), 'inputs' (columnar form) "
            "or 'image_bytes' (one image)"
        )
    key = present[0]
    if key == "instances":
        return ROWS, _non_empty_list(document["instances"], "instances")
    if key == "inputs":
        return COLUMNS, _columns(document["inputs"])
    return SINGLE, [document[_SINGLE_IMAGE_KEY]]


def _non_empty_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"'{key}' must be a list, not {_json_type(value)}")
    if not value:
        raise BadInput(f"'{key}' is empty: send at least one instance")
    return value


def _columns(inputs: Any) -> list[Any]:
    """The columnar form's instances: a list, one named input's list, or one image."""
    if isinstance(inputs, dict) and "b64" not in inputs:
        if len(inputs) != 1:
            raise BadInput(f"'inputs' names {len(inputs)} inputs; this model takes one image input")
        (inputs,) = inputs.values()
    if isinstance(inputs, list):
        return _non_empty_list(inputs, "inputs")
    return [inputs]


def _image_bytes(value: Any, where: str) -> bytes:
    """The image bytes of one instance: `{"b64": s}`, `{"<input name>": {"b64": s}}`, or a b64 string."""
    if isinstance(value, dict) and len(value) == 1 and "b64" not in value:
        (value,) = value.values()
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if not isinstance(value, str):
        raise BadInput(
            f'{where} must be an image as {{"b64": "<base64>"}} or '
            f'{{"image_bytes": {{"b64": "<base64>"}}}}, not {_json_type(value)}'
        )
    return decode_base64(value, where)


def decode_base64(text: str, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadInput(f"{where} is not valid base64") from None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
