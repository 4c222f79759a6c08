"""A cheap check of a request body's outer shape before it goes upstream.

Only the JSON structure is looked at: base64 payloads are neither decoded nor copied.
The handler checks each instance; this refuses what is malformed as a whole.
"""

from __future__ import annotations

import json

from shim.errors import ShimError

PREDICT_KEYS = ("instances", "inputs", "image_bytes")
OPTIONAL_KEYS = ("signature_name", "context")


def check_body(body: bytes, verb: str) -> None:
    """Raise a 400 ShimError unless `body` is a JSON object of the shape `verb` takes."""
    if not body.strip():
        raise ShimError(400, "the request body is empty: send a JSON object such as {\"instances\": [...]}")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ShimError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ShimError(400, "the JSON body must be an object")
    if verb == "predict":
        _check_predict(document)
    else:
        _check_examples(document, verb)


def _check_predict(document: dict) -> None:
    present = [key for key in PREDICT_KEYS if key in document]
    if len(present) != 1:
        raise ShimError(
            400,
            "the body must have exactly one of 'instances' (row form), 'inputs' (columnar form) "
            "or 'image_bytes' (one image)",
        )
    unexpected = sorted(set(document) - set(PREDICT_KEYS) - set(OPTIONAL_KEYS))
    if unexpected:
        raise ShimError(400, f"unexpected key(s) {', '.join(map(repr, unexpected))} in the request body")
    if present == ["instances"]:
        _non_empty_list(document["instances"], "instances")


def _check_examples(document: dict, verb: str) -> None:
    unexpected = sorted(set(document) - {"examples", *OPTIONAL_KEYS})
    if "examples" not in document or unexpected:
        raise ShimError(400, f":{verb} takes a body with 'examples' (and optional 'context', 'signature_name')")
    _non_empty_list(document["examples"], "examples")


def _non_empty_list(value: object, key: str) -> None:
    if not isinstance(value, list):
        raise ShimError(400, f"'{key}' must be a list")
    if not value:
        raise ShimError(400, f"'{key}' is empty: send at least one instance")
