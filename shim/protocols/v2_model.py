"""A fastai model's v2 tensors: what its metadata declares, the handler's body a request's inputs make, and
the output tensors of the handler's answer.

Inputs per Learner kind (from the handler's description, the `fastai` metadata):
- vision: one BYTES input of encoded images, shape [-1] (JSON: each image a base64 string);
- text: one BYTES input of UTF-8 texts, shape [-1];
- tabular and collaborative filtering: one input per column, shape [-1], as MLServer's pandas codec
  types them: BYTES for string categories, INT64 for integer ones, BOOL for boolean ones, FP64 for
  numeric ones, FP32 for continuous columns (any integer or float type is read). A missing value is a
  JSON null, or NaN in a floating-point tensor.
The inputs become the body the TF-Serving routes send (the images body, or `{"instances": [...]}`), so a
v2 request is read by the same body contract, batched with the same requests and answered with the same
numbers. Outputs per task (schema.py): `probabilities` FP32 [-1, classes], `scores` FP32 [-1, classes]
(multi-label), `values` FP32 [-1, targets] (regression), `mask` INT64 [-1, height, width] (segmentation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Any

import numpy as np

from fastai_serving.contract.columns import BOOLEAN, CATEGORICAL, INTEGER, NUMBER, STRING
from fastai_serving.contract.errors import BadInput
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE, images_body
from fastai_serving.contract.instances import decode_base64
from fastai_serving.contract.vocabulary import COLLAB, IMAGE_INPUT, TABULAR, TEXT, TEXT_INPUT, VISION
from fastai_serving_shim.calls import Description
from fastai_serving_shim.protocols.schema import V2_DATATYPES, column_element, output_of, output_shape
from fastai_serving_shim.protocols.v2_tensors import (
    BOOL,
    BYTES,
    CONTENT_TYPE,
    FLOATS,
    FP32,
    FP64,
    INTEGERS,
    InferRequest,
    Tensor,
)

PLATFORM = "fastai_torchserve"  # the metadata's "platform": <project>_<format>, as the protocol asks
SERVER_NAME = "fastai-serving"
# The protocol's extensions this server speaks (Triton's names): the binary tensor data extension.
EXTENSIONS = ("binary_tensor_data",)
JSON_CONTENT_TYPE = "application/json"
# The codec hint (`content_type` parameter) each kind of input takes: MLServer's and KServe's names.
BASE64, STR = "base64", "str"


def server_metadata() -> dict[str, Any]:
    """The v2 server metadata: this server's name, its version and the protocol extensions it speaks."""
    try:
        version = package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelTensors:
    """The v2 face of one model version: its kind, task, inputs and outputs (from the handler's description)."""

    kind: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    columns: tuple[Mapping[str, Any], ...] = ()  # tabular and collab: the handler's column descriptions


def model_tensors(described: Mapping[str, Any]) -> ModelTensors:
    """The model's v2 inputs and outputs, from the handler's description (task, kind, inputs, classes)."""
    kind, task = str(described.get("kind", VISION)), str(described.get("task", ""))
    columns: tuple[Mapping[str, Any], ...] = ()
    if kind == VISION:
        inputs = (TensorSpec(IMAGE_INPUT, BYTES, (-1,)),)
    elif kind == TEXT:
        inputs = (TensorSpec(TEXT_INPUT, BYTES, (-1,)),)
    else:
        columns = tuple(described.get("inputs", []))
        inputs = tuple(TensorSpec(str(column["name"]), column_datatype(column), (-1,)) for column in columns)
    output = output_of(task)
    outputs = (TensorSpec(output.v2_name, V2_DATATYPES[output.element], tuple(output_shape(described))),)
    return ModelTensors(kind, task, inputs, outputs, columns)


def column_datatype(column: Mapping[str, Any]) -> str:
    """The datatype a column's input is declared with (MLServer's pandas codec's choice for its values)."""
    return V2_DATATYPES[column_element(column)]


def accepted_datatypes(column: Mapping[str, Any]) -> tuple[str, ...]:
    """Every datatype a column's input may come as: any number type for a number, BYTES for strings."""
    declared = column_datatype(column)
    if declared in (FP32, FP64):
        return (*FLOATS, *INTEGERS)
    if declared == "INT64":
        return (*INTEGERS, *FLOATS)  # 3.0 is the integer category 3, as in the JSON rows
    if column.get("kind") == CATEGORICAL and column.get("type") not in (STRING, INTEGER, NUMBER, BOOLEAN):
        return (BYTES, BOOL, *INTEGERS, *FLOATS)  # categories of mixed types
    return (declared,)


def metadata(description: Description) -> dict:
    """The v2 model metadata; `fastai` (not in the protocol, which has no field for it) names the classes."""
    tensors = model_tensors(description.described)
    return {
        "name": description.model,
        "versions": list(description.versions),
        "platform": PLATFORM,
        "inputs": [spec.describe() for spec in tensors.inputs],
        "outputs": [spec.describe() for spec in tensors.outputs],
        "fastai": dict(description.described),
    }


@dataclass(frozen=True)
class V2Payload:
    """A v2 inference request's inputs: checked against the model's tensors, sent as the TF-Serving routes' body."""

    request: InferRequest
    model: str  # the model the URL or message names
    needs_current_handler = True  # the v2 fronts read the answering version's outputs

    @property
    def instances(self) -> int:
        return max((tensor.shape[0] for tensor in self.request.inputs if tensor.shape), default=0)

    def check(self, description: Description) -> None:
        if self.request.model_name and self.request.model_name != self.model:
            raise BadInput(f"the request body names model {self.request.model_name!r}, its URL {self.model!r}")
        check_outputs(model_tensors(description.described), self.request)

    def upstream(self, description: Description) -> tuple[bytes, str]:
        return upstream_body(model_tensors(description.described), self.request)


def outputs_of(description: Description, request: InferRequest, answers: Mapping[str, Any]) -> list[Tensor]:
    """The handler's answer to `request` as the output tensors it asked for."""
    return output_tensors(model_tensors(description.described), request, answers)


def check_outputs(tensors: ModelTensors, request: InferRequest) -> None:
    """Refuse, before any inference, a requested output the model does not have."""
    names = [spec.name for spec in tensors.outputs]
    for output in request.outputs:
        if output.name not in names:
            raise BadInput(f"requested output {output.name!r} is not an output of this model: it has {names[0]!r}")


def upstream_body(tensors: ModelTensors, request: InferRequest) -> tuple[bytes, str]:
    """The body (and its content type) the handler reads for `request`: what the TF-Serving routes send."""
    if tensors.kind == VISION:
        (tensor,) = _one_input(tensors, request)
        _check_content_type(tensor, (BASE64,))
        return images_body([_image(value, tensor, index) for index, value in enumerate(tensor.values)]), (
            IMAGES_CONTENT_TYPE
        )
    if tensors.kind == TEXT:
        (tensor,) = _one_input(tensors, request)
        _check_content_type(tensor, (STR,))
        texts = [_text(value, tensor, index) for index, value in enumerate(tensor.values)]
        return json.dumps({"instances": texts}).encode(), JSON_CONTENT_TYPE
    if tensors.kind in (TABULAR, COLLAB):
        return json.dumps({"instances": _rows(tensors, request)}).encode(), JSON_CONTENT_TYPE
    raise BadInput(f"this model's kind {tensors.kind!r} has no v2 inputs")


def output_tensors(tensors: ModelTensors, request: InferRequest, answer: Mapping[str, Any]) -> list[Tensor]:
    """The handler's `{"predictions": [...]}` as the requested output tensors (every output when none are named)."""
    (spec,) = tensors.outputs
    try:
        array = np.asarray(answer["predictions"], dtype=np.int64 if spec.datatype == "INT64" else np.float32)
    except ValueError:
        raise BadInput("the answers to this request's instances differ in shape, so no one tensor holds them: "
                       "send instances of one size per request") from None  # fmt: skip
    if array.ndim == 1:
        array = array.reshape(-1, 1)  # one value per instance is still [n, 1], as the metadata says
    output = Tensor(spec.name, spec.datatype, tuple(array.shape), array.ravel().tolist())
    wanted = {requested.name for requested in request.outputs}
    return [output] if not wanted or output.name in wanted else []


# --- Inputs ---------------------------------------------------------------------------------------


def _one_input(tensors: ModelTensors, request: InferRequest) -> list[Tensor]:
    """The one BYTES input of an image or text model, whatever its name, of shape [n] (or [n, 1])."""
    (spec,) = tensors.inputs
    if len(request.inputs) != 1:
        sent = ", ".join(repr(tensor.name) for tensor in request.inputs)
        raise BadInput(
            f"this model takes one input, {spec.name!r} (BYTES, shape [-1]); the request has {len(request.inputs)}"
            f" ({sent})"
        )
    (tensor,) = request.inputs
    if tensor.datatype != BYTES:
        raise BadInput(f"input {tensor.name!r} is {tensor.datatype}: this model takes BYTES ({spec.name!r})")
    _instance_count(tensor)
    return [tensor]


def _instance_count(tensor: Tensor) -> int:
    """The instances in an input: its first dimension; a second one may only be 1 ([n] or [n, 1])."""
    shape = tensor.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadInput(f"input {tensor.name!r} has shape {list(shape)}: send [n] (or [n, 1]), one element per instance")
    if shape[0] == 0:
        raise BadInput(f"input {tensor.name!r} holds no instance: send at least one")
    return shape[0]


def _check_content_type(tensor: Tensor, allowed: Sequence[str]) -> None:
    content_type = tensor.parameters.get(CONTENT_TYPE)
    if content_type is not None and content_type not in allowed:
        raise BadInput(
            f"input {tensor.name!r}: content_type {content_type!r} is not one this input reads "
            f"({', '.join(map(repr, allowed))})"
        )


def _image(value: Any, tensor: Tensor, index: int) -> bytes:
    """One encoded image: as sent in binary or gRPC; base64 in JSON (or with content_type "base64")."""
    where = f"input {tensor.name!r}, instance {index}"
    if value is None:
        raise BadInput(f"{where} is null: send an encoded image")
    if tensor.from_json or tensor.parameters.get(CONTENT_TYPE) == BASE64:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise BadInput(f"{where} is not valid base64") from None
        return decode_base64(text, where)
    return value


def _text(value: Any, tensor: Tensor, index: int) -> str:
    where = f"input {tensor.name!r}, instance {index}"
    if value is None:
        raise BadInput(f"{where} is null: send a text")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{where} is not UTF-8 text") from None


def _rows(tensors: ModelTensors, request: InferRequest) -> list[dict[str, Any]]:
    """The rows a tabular request's column inputs make; inputs that are not columns are ignored, as in JSON rows."""
    sent = {tensor.name: tensor for tensor in request.inputs}
    names = [str(column["name"]) for column in tensors.columns]
    missing = [name for name in names if name not in sent]
    if missing:
        listed = ", ".join(map(repr, names[:12])) + (", ..." if len(names) > 12 else "")
        raise BadInput(f"the request has no input {missing[0]!r}: this model takes one input per column ({listed})")
    counts = {name: _instance_count(sent[name]) for name in names}
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{name!r} has {count}" for name, count in list(counts.items())[:4])
        raise BadInput(f"the column inputs must hold one value per row, as many each: {described}")
    columns = {str(column["name"]): _column_values(column, sent[str(column["name"])]) for column in tensors.columns}
    (count,) = set(counts.values())
    return [{name: values[index] for name, values in columns.items()} for index in range(count)]


def _column_values(column: Mapping[str, Any], tensor: Tensor) -> list[Any]:
    """A column input's values as the JSON rows carry them (None: missing); the handler checks each against the column."""
    accepted = accepted_datatypes(column)
    if tensor.datatype not in accepted:
        why = f"its categories are {column.get('type')}s" if column.get("kind") == CATEGORICAL else "continuous"
        raise BadInput(
            f"input {tensor.name!r} is {tensor.datatype}: column {tensor.name!r} is {column_datatype(column)} ({why})"
        )
    _check_content_type(tensor, (STR,) if tensor.datatype == BYTES else ())
    values = []
    for index, value in enumerate(tensor.values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"input {tensor.name!r}, instance {index} is not UTF-8 text") from None
        elif isinstance(value, float) and math.isnan(value):
            value = None  # pandas' missing value
        elif isinstance(value, float) and math.isinf(value):
            raise BadInput(f"input {tensor.name!r}, instance {index}: {value} is not a finite number")
        values.append(value)
    return values
