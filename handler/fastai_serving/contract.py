"""The body contract: every request shape the servers take, and every message for a shape that is wrong.

One module for every front: the REST shim checks a body's outer shape with `read_body`
before it goes upstream, the handler reads the same body with the same function and then
each instance, and the gRPC front builds the same bodies. So a client gets one wording for
each mistake, whichever door it came in by. Imports neither torch nor PIL.

The forms (TF Serving's REST API, plus the original fastai-serving's):
- raw bytes, as `curl -T tile.png` sends to TorchServe: one image (or one UTF-8 text), answered as one prediction;
- `{"instances": [...]}`: the row form, answered `{"predictions": [...]}`;
- `{"inputs": ...}`: the columnar form, answered `{"outputs": [...]}`; named columns of equal length
  (`{"colour": [...], "size": [...]}`) are read as the rows they make;
- `{"image_bytes": "<b64>"}`, `{"text": "..."}` or `{"row": {...}}`: one instance, answered `{"prediction": ...}`;
- `{"examples": [...]}`: the body of TF Serving's `:classify` and `:regress` verbs;
- the images body: several images' bytes as they are, framed (`images_body`), which the gRPC
  front sends upstream: read as the row form (`:classify`/`:regress`: as examples), answered alike.
Each may carry `signature_name` (and `:classify`/`:regress` a `context`).

An instance is a JSON value until the model's input kind reads it: image bytes (`image_bytes`),
a tabular row checked column by column against the Learner's columns (`read_row`), or a text
(`read_text`). Which one is the Learner's kind (`VISION`, `TABULAR`, `TEXT`, `COLLAB`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
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

# The kinds of Learner served (make-archive detects and records it; the metadata's "kind").
VISION, TABULAR, TEXT, COLLAB = "vision", "tabular", "text", "collab"
KINDS = (VISION, TABULAR, TEXT, COLLAB)

# The input names the metadata advertises, and the one-instance shortcuts' keys: one image, one
# text, one tabular (or collaborative-filtering) row.
IMAGE_INPUT = "image_bytes"
TEXT_INPUT = "text"
ROW_INPUT = "row"
SHORTCUT_KEYS = {VISION: IMAGE_INPUT, TEXT: TEXT_INPUT, TABULAR: ROW_INPUT, COLLAB: ROW_INPUT}
# What an error calls the one instance of a one-instance form.
_ONE_INSTANCE = {VISION: "the image", TEXT: "the text", TABULAR: "the row", COLLAB: "the row"}

# A tabular column's kind (the metadata's "kind" of each column).
CATEGORICAL, CONTINUOUS = "categorical", "continuous"
# The JSON type of a categorical column's categories: a value of another type is refused.
STRING, INTEGER, NUMBER, BOOLEAN, ANY = "string", "integer", "number", "boolean", "any"
FLOAT32_MAX = 3.4028234663852886e38  # continuous values go to the model as float32

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
    shortcut_key = next((key for key in (IMAGE_INPUT, TEXT_INPUT, ROW_INPUT) if key in document), "")
    return Body(
        form=form,
        instances=instances,
        verb=verb,
        signature_name=signature_name,
        shortcut_key=shortcut_key if form == SINGLE else "",
    )


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
    if not isinstance(body, (bytes, bytearray)):
        raise BadInput("the request has no body")
    if not body.strip():
        raise BadInput('the request body is empty: send a JSON object such as {"instances": [...]}')
    if raw_allowed and body.lstrip()[:1] not in (b"{", b"["):
        return None
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
    """Standard or URL-safe base64, padding optional."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadInput(f"{where} is not valid base64") from None


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


@dataclass(frozen=True)
class Column:
    """One input column of a tabular or collaborative-filtering Learner, as clients send it."""

    name: str
    kind: str  # CATEGORICAL or CONTINUOUS
    value_type: str = NUMBER  # the JSON type of its values (a categorical column's: its categories' type)
    nullable: bool = True  # null, a missing value, is filled by the Learner's procs
    categories: tuple[Any, ...] = field(default=(), repr=False)  # categorical: those seen in training, in order

    def describe(self) -> dict[str, Any]:
        """The column as the metadata tells it."""
        described: dict[str, Any] = {"name": self.name, "kind": self.kind, "type": self.value_type}
        if self.kind == CATEGORICAL:
            described["categories"] = list(self.categories)
        described["nullable"] = self.nullable
        return described

    def read(self, value: Any, where: str) -> Any:
        """`value` as the Learner takes it (None: missing); `BadInput` naming the instance and column."""
        if value is None:
            if not self.nullable:
                raise BadInput(
                    f"{where}, column {self.name!r}: null (a missing value), but the Learner saw no missing "
                    f"{self.name!r} in training and cannot fill one: send a number"
                )
            return None
        if self.kind == CONTINUOUS:
            return self._number(value, where)
        if _is_type(value, self.value_type):
            return int(value) if self.value_type == INTEGER else value
        example = f" such as {self.categories[0]!r}" if self.categories else ""
        raise BadInput(
            f"{where}, column {self.name!r} must be {_a(self.value_type)} (a category{example}), not {json_type(value)}"
        )

    def _number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"{where}, column {self.name!r} must be a number, not {json_type(value)}")
        number = float(value) if abs(value) <= FLOAT32_MAX else math.inf
        if not math.isfinite(number):
            raise BadInput(f"{where}, column {self.name!r}: {value!r} is not a finite number within float32's range")
        return number


def _is_type(value: Any, value_type: str) -> bool:
    """Whether a JSON value is of `value_type` (an integer may arrive as 3.0)."""
    if isinstance(value, bool):
        return value_type in (BOOLEAN, ANY)
    if value_type == STRING:
        return isinstance(value, str)
    if value_type == INTEGER:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if value_type == NUMBER:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if value_type == ANY:
        return isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value))
    return False


def _a(value_type: str) -> str:
    return {INTEGER: "an integer", ANY: "a string, number or boolean"}.get(value_type, f"a {value_type}")


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
