"""Request bodies: every shape the servers take, and every message for a shape that is wrong.

One module for every front: the REST shim checks a body's outer shape with `read_body` before it
goes upstream, the handler reads the same body with the same function and then each instance
(instances.py), and the gRPC front builds the same bodies. So a client gets one wording for each
mistake, whichever door it came in by. Imports neither torch nor PIL. Bodies are parsed with orjson (the
standard library's parser has the last word on what orjson refuses, so every message stays its own); the
one difference: an integer beyond 64 bits is read as the nearest float, where no Learner's category could
match it anyway (pandas' integer columns hold 64 bits).

The forms (TF Serving's REST API, plus the original fastai-serving's):
- raw bytes, as `curl -T tile.png` sends to TorchServe: one image (or one UTF-8 text), answered as one prediction;
- `{"instances": [...]}`: the row form, answered `{"predictions": [...]}`;
- `{"inputs": ...}`: the columnar form, answered `{"outputs": [...]}`; named columns of equal length
  (`{"colour": [...], "size": [...]}`) are read as the rows they make;
- `{"image_bytes": "<b64>"}`, `{"text": "..."}` or `{"row": {...}}`: one instance, answered `{"prediction": ...}`;
- `{"examples": [...]}`: the body of TF Serving's `:classify` and `:regress` verbs;
- the images body (images_wire.py): several images' bytes as they are, framed, which the gRPC
  front sends upstream: read as the row form (`:classify`/`:regress`: as examples), answered alike.
Each may carry `signature_name` (and `:classify`/`:regress` a `context`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import BadInput, json_type
from .images_wire import is_images_body, read_images_body
from .vocabulary import (
    CLASS_INDEX_SIGNATURE,
    CLASSIFIERS,
    CLASSIFY,
    COLLAB,
    COLUMNS,
    EXAMPLES,
    IMAGE_INPUT,
    PREDICT,
    PROBABILITIES_SIGNATURES,
    RAW,
    REGRESS,
    REGRESSION,
    ROW_INPUT,
    ROWS,
    SHORTCUT_KEYS,
    SINGLE,
    TABULAR,
    TEXT,
    TEXT_INPUT,
    VERBS,
    VISION,
)

# What an error calls the one instance of a one-instance form.
_ONE_INSTANCE = {VISION: "the image", TEXT: "the text", TABULAR: "the row", COLLAB: "the row"}
_FORM_KEYS = {"instances": ROWS, "inputs": COLUMNS, IMAGE_INPUT: SINGLE, TEXT_INPUT: SINGLE, ROW_INPUT: SINGLE}
_OPTIONAL_KEYS = ("signature_name", "context")


@dataclass(frozen=True)
class Body:
    """What one request asks for: its instances as sent (JSON values; raw: the bytes), and how to answer."""

    form: str
    instances: list[Any]
    verb: str = PREDICT
    signature_name: str = ""
    shortcut_key: str = ""  # the one-instance form's key: image_bytes, text or row

    def instance_name(self, index: int, kind: str = VISION) -> str:
        """How errors name an instance: "the image" (text, row) for one-instance forms, else "instance <i>"."""
        return _ONE_INSTANCE.get(kind, "the instance") if self.form in (RAW, SINGLE) else f"instance {index}"


def read_body(body: Any, verb: str = PREDICT, *, raw_allowed: bool = True, max_instances: int | None = None) -> Body:
    """A request body (bytes, text, or JSON already parsed) as a `Body`; `BadInput` names what is wrong.

    `raw_allowed`: bytes that are not JSON are one raw image (TorchServe's direct API); the
    TF-Serving fronts take JSON only.
    """
    if verb not in VERBS:
        raise BadInput(f"unknown verb {verb!r}: expected one of {', '.join(VERBS)}")
    if isinstance(body, str):  # TorchServe hands over a text/plain body as text
        body = body.encode("utf-8")
    if raw_allowed and isinstance(body, (bytes, bytearray)) and is_images_body(body):
        signature_name, images = read_images_body(body, max_instances)
        form = ROWS if verb == PREDICT else EXAMPLES
        return Body(form=form, instances=images, verb=verb, signature_name=signature_name)
    document = _json_document(body, raw_allowed)
    if document is None:
        if verb != PREDICT:
            raise BadInput(f":{verb} takes a JSON body with 'examples'")
        return Body(form=RAW, instances=[bytes(body)])
    if not isinstance(document, dict):
        raise BadInput(f"the JSON body must be an object, not {json_type(document)}")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise BadInput(f"'signature_name' must be a string, not {json_type(signature_name)}")
    form, instances = _form_of(document, verb)
    if max_instances is not None and len(instances) > max_instances:
        raise BadInput(f"{len(instances)} instances in one request, over the limit of {max_instances}")
    shortcut_key = next((key for key in (IMAGE_INPUT, TEXT_INPUT, ROW_INPUT) if key in document), "")
    return Body(
        form=form,
        instances=instances,
        verb=verb,
        signature_name=signature_name,
        shortcut_key=shortcut_key if form == SINGLE else "",
    )


def _json_document(body: Any, raw_allowed: bool) -> Any:
    """The body as a JSON value, or None when it is raw (image) bytes."""
    if isinstance(body, (dict, list)):
        return body
    if not isinstance(body, (bytes, bytearray)):
        raise BadInput("the request has no body")
    if not body.strip():
        raise BadInput('the request body is empty: send a JSON object such as {"instances": [...]}')
    if raw_allowed and body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:  # orjson: 2.5-5x the standard library's speed on a body of base64 images
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # what orjson refuses gets the standard library's verdict and wording (NaN, 1e400, deep nesting)
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # ValueError: bad JSON, bad UTF-8, an integer of over 4300 digits
        raise BadInput(f"the body is not valid JSON: {error}") from None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them: refused."""
    raise json.JSONDecodeError(f"{name} is not a JSON value (send null for a missing value)", name, 0)


def _form_of(document: dict[str, Any], verb: str) -> tuple[str, list[Any]]:
    """Which form `document` is, and its instances in order."""
    if verb != PREDICT:
        unexpected = sorted(set(document) - {"examples", *_OPTIONAL_KEYS})
        if "examples" not in document or unexpected:
            raise BadInput(f":{verb} takes a body with 'examples' (and optional 'context', 'signature_name')")
        return EXAMPLES, _non_empty_list(document["examples"], "examples")
    unexpected = sorted(set(document) - set(_FORM_KEYS) - set(_OPTIONAL_KEYS))
    if unexpected:
        hint = " ('examples' is the body of :classify and :regress)" if "examples" in unexpected else ""
        raise BadInput(f"unexpected key(s) {', '.join(map(repr, unexpected))} in the request body{hint}")
    present = [key for key in _FORM_KEYS if key in document]
    if len(present) != 1:
        raise BadInput(
            "the body must have exactly one of 'instances' (row form), 'inputs' (columnar form), "
            f"'{IMAGE_INPUT}' (one image), '{TEXT_INPUT}' (one text) or '{ROW_INPUT}' (one tabular row)"
        )
    (key,) = present
    form = _FORM_KEYS[key]
    if form == ROWS:
        return ROWS, _non_empty_list(document["instances"], "instances")
    if form == COLUMNS:
        return COLUMNS, _columns(document["inputs"])
    return SINGLE, [document[key]]


def _non_empty_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"'{key}' must be a list, not {json_type(value)}")
    if not value:
        raise BadInput(f"'{key}' is empty: send at least one instance")
    return value


def _columns(inputs: Any) -> list[Any]:
    """The columnar form's instances: a list, one image, or named inputs read as the rows they make.

    `{"colour": ["red", "blue"], "size": [1, 2]}` is the rows `{"colour": "red", "size": 1}` and
    `{"colour": "blue", "size": 2}`; named inputs that are not lists are one row.
    """
    if isinstance(inputs, list):
        return _non_empty_list(inputs, "inputs")
    if not isinstance(inputs, dict) or "b64" in inputs:
        return [inputs]
    if not inputs:
        raise BadInput("'inputs' is empty: send at least one named input")
    lengths = {name: len(values) for name, values in inputs.items() if isinstance(values, list)}
    if not lengths:
        return [inputs]
    if len(lengths) != len(inputs) or len(set(lengths.values())) != 1:
        described = ", ".join(
            f"{name!r} has {lengths[name]} values" if name in lengths else f"{name!r} is {json_type(inputs[name])}"
            for name in list(inputs)[:4]
        )
        raise BadInput(f"the named inputs in 'inputs' must be lists of one length: {described}")
    (count,) = set(lengths.values())
    if count == 0:
        raise BadInput("'inputs' is empty: send at least one instance")
    return [{name: values[index] for name, values in inputs.items()} for index in range(count)]


def check_form(kind: str, body: Body) -> None:
    """Refuse a one-instance or raw form that is not this kind of model's."""
    wanted = SHORTCUT_KEYS[kind]
    if body.form == SINGLE and body.shortcut_key != wanted:
        raise BadInput(
            f'{{"{body.shortcut_key}": ...}} is the one-instance form of another kind of model; '
            f'this {kind} model takes {{"{wanted}": ...}} or {{"instances": [...]}}'
        )
    if body.form == RAW and kind in (TABULAR, COLLAB):
        raise BadInput(f'this {kind} model takes JSON rows: {{"instances": [{{"<column>": <value>, ...}}, ...]}}')


def check_answerable(task: str, body: Body) -> None:
    """Refuse, before any inference, a request a model of `task` cannot answer."""
    classifier = task in CLASSIFIERS
    if body.verb == CLASSIFY and not classifier:
        raise BadInput(f":classify needs a classifier; this model does {task} (use :predict)")
    if body.verb == REGRESS and task != REGRESSION:
        raise BadInput(f":regress needs a regression model; this model does {task} (use :predict)")
    signature = body.signature_name
    if signature == CLASS_INDEX_SIGNATURE and not classifier:
        raise BadInput(f"signature_name 'classes' needs a classifier; this model does {task}")
    if signature not in PROBABILITIES_SIGNATURES + (CLASS_INDEX_SIGNATURE,):
        raise BadInput(
            f"unknown signature_name {signature!r}: this model serves 'serving_default' "
            f"(probabilities) and 'classes' (class indices)"
        )
