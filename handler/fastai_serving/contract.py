"""The body contract: every request shape the servers take, and every message for a shape that is wrong.

One module for every front: the REST shim checks a body's outer shape with `read_body`
before it goes upstream, the handler reads the same body with the same function and then
each instance, and the gRPC front builds the same bodies. So a client gets one wording for
each mistake, whichever door it came in by. Imports neither torch nor PIL.

The forms (TF Serving's REST API, plus the original fastai-serving's):
- raw image bytes, as `curl -T tile.png` sends to TorchServe: one instance, answered as one prediction;
- `{"instances": [...]}`: the row form, answered `{"predictions": [...]}`;
- `{"inputs": ...}`: the columnar form, answered `{"outputs": [...]}`;
- `{"image_bytes": "<b64>"}` or `{"image_bytes": {"b64": ...}}`: one image, answered `{"prediction": ...}`;
- `{"examples": [...]}`: the body of TF Serving's `:classify` and `:regress` verbs;
- the images body: several images' bytes as they are, framed (`images_body`), which the gRPC
  front sends upstream: read as the row form (`:classify`/`:regress`: as examples), answered alike.
Each may carry `signature_name` (and `:classify`/`:regress` a `context`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BadInput

# TF Serving's verbs: the part of the URL after the colon.
PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
VERBS = (PREDICT, CLASSIFY, REGRESS)

# Body forms.
RAW, SINGLE, ROWS, COLUMNS, EXAMPLES = "raw", "single", "rows", "columns", "examples"

# The tasks a served Learner does (its metadata's "task").
SINGLE_LABEL = "classification"
MULTI_LABEL = "multilabel_classification"
REGRESSION = "regression"
SEGMENTATION = "segmentation"
TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION, SEGMENTATION)
CLASSIFIERS = (SINGLE_LABEL, MULTI_LABEL)

# signature_name: probabilities (TF Serving's default name, or none), or the original
# fastai-serving's answer, the predicted class index.
PROBABILITIES_SIGNATURES = ("", "serving_default", "predict")
CLASS_INDEX_SIGNATURE = "classes"

# The input name the metadata advertises for images, and the one-image shortcut's key.
IMAGE_INPUT = "image_bytes"

# The fronts name the TF Serving verb to the handler in this request header (default: predict).
VERB_HEADER = "x-fastai-serving-verb"
# The handler names the model version that answered, and its task, in these response headers.
VERSION_HEADER = "x-fastai-serving-model-version"
TASK_HEADER = "x-fastai-serving-task"

# Model names TorchServe registers (torch-model-archiver's own rule): nothing else reaches a URL.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
# A version in a TF Serving URL: /versions/<digits>.
URL_VERSION = re.compile(r"^[0-9]+$")

# The images body: this signature (no JSON or image starts with a NUL byte), the length of a JSON
# header as 4 bytes big-endian, the header {"signature_name": ..., "lengths": [...]}, then the images.
IMAGES_BODY_SIGNATURE = b"\x00fastai-serving images\n"
IMAGES_CONTENT_TYPE = "application/octet-stream"  # TorchServe hands such a body to the handler as bytes
_HEADER_LENGTH = struct.Struct(">I")

_FORM_KEYS = {"instances": ROWS, "inputs": COLUMNS, IMAGE_INPUT: SINGLE}
_OPTIONAL_KEYS = ("signature_name", "context")


@dataclass(frozen=True)
class Body:
    """What one request asks for: its instances as sent (JSON values; raw: the bytes), and how to answer."""

    form: str
    instances: list[Any]
    verb: str = PREDICT
    signature_name: str = ""

    def instance_name(self, index: int) -> str:
        """How errors name an instance: "the image" for one-instance forms, else "instance <i>"."""
        return "the image" if self.form in (RAW, SINGLE) else f"instance {index}"


def read_body(body: Any, verb: str = PREDICT, *, raw_allowed: bool = True, max_instances: int | None = None) -> Body:
    """A request body (bytes, text, or JSON already parsed) as a `Body`; `BadInput` names what is wrong.

    `raw_allowed`: bytes that are not JSON are one raw image (TorchServe's direct API); the
    TF-Serving fronts take JSON only.
    """
    if verb not in VERBS:
        raise BadInput(f"unknown verb {verb!r}: expected one of {', '.join(VERBS)}")
    if raw_allowed and isinstance(body, (bytes, bytearray)) and body.startswith(IMAGES_BODY_SIGNATURE):
        return _images_body(body, verb, max_instances)
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
    return Body(form=form, instances=instances, verb=verb, signature_name=signature_name)


def images_body(images: Sequence[bytes], signature_name: str = "") -> bytes:
    """Several images' bytes as one body, with no base64 and no JSON around them (the gRPC front's upstream form)."""
    header = json.dumps({"signature_name": signature_name, "lengths": [len(image) for image in images]}).encode()
    return b"".join([IMAGES_BODY_SIGNATURE, _HEADER_LENGTH.pack(len(header)), header, *images])


def _images_body(body: bytes | bytearray, verb: str, max_instances: int | None) -> Body:
    """The images body as a `Body` of the row form (examples for :classify and :regress), its instances bytes."""
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
    instances, offset = [], start
    for length in lengths:
        instances.append(bytes(view[offset : offset + length]))
        offset += length
    return Body(
        form=ROWS if verb == PREDICT else EXAMPLES, instances=instances, verb=verb, signature_name=signature_name
    )


def _json_document(body: Any, raw_allowed: bool) -> Any:
    """The body as a JSON value, or None when it is raw (image) bytes."""
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):
        raise BadInput("the request has no body")
    if not body.strip():
        raise BadInput('the request body is empty: send a JSON object such as {"instances": [...]}')
    if raw_allowed and body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BadInput(f"the body is not valid JSON: {error}") from None


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
            "the body must have exactly one of 'instances' (row form), 'inputs' (columnar form) "
            f"or '{IMAGE_INPUT}' (one image)"
        )
    (key,) = present
    form = _FORM_KEYS[key]
    if form == ROWS:
        return ROWS, _non_empty_list(document["instances"], "instances")
    if form == COLUMNS:
        return COLUMNS, _columns(document["inputs"])
    return SINGLE, [document[IMAGE_INPUT]]


def _non_empty_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"'{key}' must be a list, not {json_type(value)}")
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


def image_bytes(instance: Any, where: str) -> bytes:
    """The image bytes of one instance: `{"b64": s}`, `{"<input name>": {"b64": s}}`, a b64 string, or raw bytes."""
    if isinstance(instance, (bytes, bytearray)):
        return bytes(instance)
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
    """Standard or URL-safe base64, padding optional."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadInput(f"{where} is not valid base64") from None


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def check_model_name(model: str) -> None:
    """Refuse a model name TorchServe could not have registered, before it goes into any URL."""
    if not MODEL_NAME.match(model):
        raise BadInput(
            f"model {model!r} not found: model names are letters, digits, '_', '-' and '.', "
            "starting with a letter or digit",
            status=404,
        )


def check_url_version(version: str) -> None:
    if not URL_VERSION.match(version):
        raise BadInput(f"version {version!r} is not a number: use /versions/<digits>")


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
