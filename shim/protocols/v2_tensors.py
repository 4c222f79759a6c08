"""The Open Inference Protocol's (KServe v2) tensors on the wire: REST (JSON and binary) and gRPC, both ways.

Front-neutral: a request becomes an `InferRequest` of `Tensor`s (flat lists of Python values,
BYTES elements as bytes) whichever way it came, and an answer's `Tensor`s become a REST body or a
gRPC message. What the tensors mean for a model (images, texts, columns) is `v2_model`'s job.

REST, per the Open Inference Protocol and Triton's binary tensor data extension: with an
`Inference-Header-Content-Length` header, the body is that many bytes of JSON, then each input's
binary data in order, sized by its `binary_data_size` parameter. Outputs go back binary when asked
(`binary_data` on a requested output, or `binary_data_output` on the request), else as JSON.
gRPC: `contents`, or `raw_input_contents` in the inputs' order; answers in `raw_output_contents`.
A binary BYTES tensor is each element as a 4-byte little-endian length, then its bytes.
Errors are `BadInput` (400, INVALID_ARGUMENT) naming the input and, where it applies, the element.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastai_serving.contract.errors import BadInput, json_type

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor data extension's header, both ways
BINARY_CONTENT_TYPE = "application/octet-stream"

# Request parameters: the binary extension's, and Triton's clients' per-request `timeout` (microseconds) and
# `priority` (read, no effect: one queue). Anything else is refused, so a client's intent is never dropped.
BINARY_DATA_OUTPUT, TIMEOUT, PRIORITY = "binary_data_output", "timeout", "priority"
REQUEST_PARAMETERS = (BINARY_DATA_OUTPUT, TIMEOUT, PRIORITY)
BINARY_DATA_SIZE, BINARY_DATA = "binary_data_size", "binary_data"
# MLServer's and KServe's codec hint on an input ("str", "base64", ...): `v2_model` checks its value.
CONTENT_TYPE = "content_type"
INPUT_PARAMETERS = (BINARY_DATA_SIZE, CONTENT_TYPE)
OUTPUT_PARAMETERS = (BINARY_DATA,)

BYTES, BOOL, FP16, FP32, FP64 = "BYTES", "BOOL", "FP16", "FP32", "FP64"
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
FLOATS = (FP16, FP32, FP64)
# Each fixed-size datatype's little-endian numpy type (BF16 has none: refused).
NUMPY_TYPES = {
    BOOL: "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1", "UINT16": "<u2",
    "UINT32": "<u4", "UINT64": "<u8", FP16: "<f2", FP32: "<f4", FP64: "<f8",
}  # fmt: skip
DATATYPES = (BYTES, *NUMPY_TYPES)
# gRPC's typed `contents` field of each datatype (FP16 travels only as raw contents).
CONTENTS_FIELDS = {
    BOOL: "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", FP32: "fp32_contents", FP64: "fp64_contents", BYTES: "bytes_contents",
}  # fmt: skip
_LENGTH = struct.Struct("<I")
_REQUEST_KEYS = ("id", "model_name", "parameters", "inputs", "outputs")


@dataclass(frozen=True)
class Tensor:
    """One tensor: its name, datatype, shape and elements in row-major order (None: a JSON null)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    from_json: bool = False  # its elements came as JSON (BYTES: strings), not as binary data


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # REST: answer this output as binary data


@dataclass(frozen=True)
class InferRequest:
    """A v2 inference request, from either front."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput]  # empty: every output the model has
    id: str = ""
    model_name: str = ""  # the model the body names (KServe's client sends it), "" when it names none
    binary_output: bool = False  # REST: outputs not named go back binary (the request's binary_data_output)
    timeout_s: float | None = None  # the client's own deadline (Triton's `timeout` parameter)


# --- REST -----------------------------------------------------------------------------------------


def read_rest(body: bytes, header_length: str | None) -> InferRequest:
    """A REST infer body (JSON, or JSON then binary tensors when `header_length` is given) as an `InferRequest`."""
    json_part, binary = body, memoryview(b"")
    if header_length is not None:
        if not header_length.strip().isdigit():
            raise BadInput(f"{HEADER_LENGTH} must be a byte count, not {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise BadInput(f"{HEADER_LENGTH} says {length} bytes of JSON, but the body has only {len(body)}")
        json_part, binary = body[:length], memoryview(body)[length:]
    document = _json(json_part)
    if not isinstance(document, dict):
        raise BadInput(f"the v2 inference request must be a JSON object, not {json_type(document)}")
    unexpected = sorted(set(document) - set(_REQUEST_KEYS))
    if unexpected:
        raise BadInput(f"unexpected key(s) {', '.join(map(repr, unexpected))} in the inference request")
    request_id, model_name = document.get("id", ""), document.get("model_name", "")
    for key, value in (("id", request_id), ("model_name", model_name)):
        if not isinstance(value, str):
            raise BadInput(f"{key!r} must be a string, not {json_type(value)}")
    parameters = _parameters(document.get("parameters", {}), "the request", REQUEST_PARAMETERS)
    inputs, offset = [], 0
    for index, item in enumerate(_list(document, "inputs", required=True)):
        tensor, offset = _rest_input(item, index, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadInput(f"the body holds {len(binary) - offset} bytes after the inputs' binary data")
    _check_unique([tensor.name for tensor in inputs], "input")
    outputs = [_rest_output(item, index) for index, item in enumerate(_list(document, "outputs"))]
    _check_unique([output.name for output in outputs], "requested output")
    binary_output = parameters.get(BINARY_DATA_OUTPUT, False)
    if not isinstance(binary_output, bool):
        raise BadInput(f"parameter {BINARY_DATA_OUTPUT!r} must be a boolean, not {json_type(binary_output)}")
    return InferRequest(inputs, outputs, request_id, model_name, binary_output, _timeout_s(parameters))


def write_rest(model: str, version: str, request: InferRequest, outputs: Sequence[Tensor]) -> tuple[bytes, int | None]:
    """The REST answer: its body, and the JSON part's length when binary outputs follow it (the header's value)."""
    binary_names = {output.name for output in request.outputs if output.binary}
    if not request.outputs and request.binary_output:
        binary_names = {tensor.name for tensor in outputs}
    described, chunks = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in binary_names:
            chunk = raw_bytes(tensor)
            entry["parameters"] = {BINARY_DATA_SIZE: len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = [_json_value(value) for value in tensor.values]
        described.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id:
        answer["id"] = request.id
    answer["outputs"] = described
    header = json.dumps(answer, separators=(",", ":")).encode()
    return (header + b"".join(chunks), len(header)) if chunks else (header, None)


def _rest_input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One REST input, its data from JSON or from the binary part at `offset`; and the offset after it."""
    name, datatype, shape, parameters = _described(item, index)
    where = f"input {name!r}"
    size = parameters.get(BINARY_DATA_SIZE)
    if size is not None:
        if "data" in item:
            raise BadInput(f"{where} has both 'data' and the parameter {BINARY_DATA_SIZE!r}: send one")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"{where}: {BINARY_DATA_SIZE!r} must be a byte count, not {size!r}")
        if offset + size > len(binary):
            raise BadInput(
                f"{where}: {BINARY_DATA_SIZE!r} is {size} bytes, past the end of the body "
                f"({len(binary) - offset} bytes of binary data left)"
            )
        values = values_of_raw(binary[offset : offset + size], datatype, shape, where)
        return Tensor(name, datatype, shape, values, parameters), offset + size
    if "data" not in item:
        raise BadInput(f"{where} has no 'data' (nor the parameter {BINARY_DATA_SIZE!r} for binary data)")
    values = _flat(item["data"], where)
    _check_count(values, shape, where)
    elements = [_json_element(value, datatype, where, index) for index, value in enumerate(values)]
    return Tensor(name, datatype, shape, elements, parameters, from_json=True), offset


def _check_named(name: str, index: int) -> str:
    """An input's name, which may not be empty (both transports)."""
    if not name:
        raise BadInput(f"input {index} has an empty 'name': name it as the model's metadata names its inputs")
    return name


def _described(item: Any, index: int) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    """An input's name, datatype, shape and parameters, each checked."""
    if not isinstance(item, dict):
        raise BadInput(f"input {index} must be an object with 'name', 'datatype', 'shape' and 'data'")
    name = item.get("name")
    if not isinstance(name, str):
        raise BadInput(f"input {index} needs a 'name' (a string)")
    _check_named(name, index)
    where = f"input {name!r}"
    unexpected = sorted(set(item) - {"name", "datatype", "shape", "parameters", "data"})
    if unexpected:
        raise BadInput(f"unexpected key(s) {', '.join(map(repr, unexpected))} in {where}")
    datatype = item.get("datatype")
    check_datatype(datatype, where)
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadInput(f"{where} needs a 'shape': a list of integers, not {json_type(shape)}")
    check_shape(shape, where)
    return name, datatype, tuple(shape), _parameters(item.get("parameters", {}), where, INPUT_PARAMETERS)


def _rest_output(item: Any, index: int) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise BadInput(f"requested output {index} must be an object with a 'name'")
    unexpected = sorted(set(item) - {"name", "parameters"})
    if unexpected:
        raise BadInput(f"unexpected key(s) {', '.join(map(repr, unexpected))} in requested output {item['name']!r}")
    parameters = _parameters(item.get("parameters", {}), f"requested output {item['name']!r}", OUTPUT_PARAMETERS)
    binary = parameters.get(BINARY_DATA, False)
    if not isinstance(binary, bool):
        raise BadInput(f"requested output {item['name']!r}: {BINARY_DATA!r} must be a boolean")
    return RequestedOutput(item["name"], binary)


def _json(text: bytes) -> Any:
    if not text.strip():
        raise BadInput('the request body is empty: send a v2 inference request {"inputs": [...]}')
    try:
        # NaN (and Infinity) as numpy clients write them (tritonclient's rapidjson): NaN is a missing value
        return json.loads(text, parse_constant=float)
    except (ValueError, RecursionError) as error:
        raise BadInput(f"the inference request is not valid JSON: {error}") from None


def _list(document: dict[str, Any], key: str, required: bool = False) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise BadInput(f"{key!r} must be a list, not {json_type(value)}")
    if required and not value:
        raise BadInput(f"{key!r} is empty: send at least one input tensor")
    return value


def _flat(data: Any, where: str) -> list[Any]:
    """Tensor data as sent, nested or flat, as one row-major list."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
        if len(stack) > 32:
            raise BadInput(f"{where}: 'data' nests over 32 levels deep")
    return flat


def _json_element(value: Any, datatype: str, where: str, index: int) -> Any:
    """One JSON element as its datatype's Python value (BYTES: UTF-8 bytes of the string); null stays None."""
    if value is None:
        return None
    if datatype == BYTES:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
    elif datatype == BOOL:
        if isinstance(value, bool):
            return value
    elif datatype in INTEGERS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    wanted = {BYTES: "a string", BOOL: "a boolean"}.get(datatype, "an integer" if datatype in INTEGERS else "a number")
    raise BadInput(f"{where}, element {index}: {datatype} wants {wanted}, not {json_type(value)}")


def _json_value(value: Any) -> Any:
    """An output element as JSON: BYTES as text; NaN and infinities (which JSON lacks) as null."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _parameters(parameters: Any, where: str, known: Sequence[str]) -> dict[str, Any]:
    if not isinstance(parameters, dict):
        raise BadInput(f"the parameters of {where} must be an object, not {json_type(parameters)}")
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise BadInput(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} on {where}: this server reads {', '.join(known)}"
        )
    return parameters


def _timeout_s(parameters: Mapping[str, Any]) -> float | None:
    timeout = parameters.get(TIMEOUT)
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise BadInput(f"parameter {TIMEOUT!r} must be a positive number of microseconds, not {timeout!r}")
    return timeout / 1e6


# --- Both fronts ----------------------------------------------------------------------------------


def check_datatype(datatype: Any, where: str) -> None:
    if datatype not in DATATYPES:
        raise BadInput(f"{where} has datatype {datatype!r}: this server reads {', '.join(DATATYPES)}")


def check_shape(shape: Sequence[int], where: str) -> None:
    if any(dimension < 0 for dimension in shape):
        raise BadInput(f"{where} has shape {list(shape)}: a request's dimensions are sizes, 0 or more")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _check_count(values: Sequence[Any], shape: Sequence[int], where: str) -> None:
    if len(values) != element_count(shape):
        raise BadInput(
            f"{where} has shape {list(shape)} ({element_count(shape)} elements) but holds {len(values)} values"
        )


def _check_unique(names: Sequence[str], what: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadInput(f"{what} {repeated[0]!r} appears more than once")


def values_of_raw(raw: bytes | memoryview, datatype: str, shape: Sequence[int], where: str) -> list[Any]:
    """A binary tensor's elements: little-endian fixed-size values, or length-prefixed BYTES elements."""
    count = element_count(shape)
    if datatype == BYTES:
        return _bytes_elements(memoryview(raw), count, where)
    itemsize = np.dtype(NUMPY_TYPES[datatype]).itemsize
    if len(raw) != count * itemsize:
        raise BadInput(
            f"{where} has shape {list(shape)}: {count} {datatype} elements are {count * itemsize} bytes, "
            f"but its binary data is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=NUMPY_TYPES[datatype]).tolist()


def _bytes_elements(raw: memoryview, count: int, where: str) -> list[bytes]:
    elements, offset = [], 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise BadInput(f"{where}: its binary data ends before element {index} of {count}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BadInput(f"{where}, element {index}: {length} bytes, past the end of the input's binary data")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise BadInput(f"{where}: its binary data holds more than its {count} elements")
    return elements


def raw_bytes(tensor: Tensor) -> bytes:
    """A tensor's binary form: length-prefixed BYTES elements, or little-endian values."""
    if tensor.datatype == BYTES:
        return b"".join(_LENGTH.pack(len(value)) + bytes(value) for value in tensor.values)
    return np.asarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


# --- gRPC -----------------------------------------------------------------------------------------


def read_grpc(message: Any) -> InferRequest:
    """A ModelInferRequest (open_inference.proto) as an `InferRequest`: typed `contents`, or `raw_input_contents`."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadInput(f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents")
    if not message.inputs:
        raise BadInput("the request has no inputs: send at least one input tensor")
    parameters = _parameters(_grpc_parameters(message.parameters), "the request", (TIMEOUT, PRIORITY))
    inputs = []
    for index, item in enumerate(message.inputs):
        name = _check_named(item.name, index)
        where = f"input {name!r}"
        check_datatype(item.datatype, where)
        shape = tuple(item.shape)
        check_shape(shape, where)
        # KServe's client also names each raw input's size, as over REST
        input_parameters = _parameters(_grpc_parameters(item.parameters), where, INPUT_PARAMETERS)
        if raw:
            if item.HasField("contents"):
                raise BadInput(f"{where} has contents as well as raw_input_contents: send one")
            size = input_parameters.get(BINARY_DATA_SIZE)
            if size is not None and size != len(raw[index]):
                raise BadInput(
                    f"{where}: {BINARY_DATA_SIZE!r} is {size} bytes, its raw_input_contents {len(raw[index])}"
                )
            values = values_of_raw(raw[index], item.datatype, shape, where)
        else:
            values = _typed_contents(item, where)
            _check_count(values, shape, where)
        inputs.append(Tensor(name, item.datatype, shape, values, input_parameters))
    _check_unique([tensor.name for tensor in inputs], "input")
    outputs = []
    for output in message.outputs:
        _parameters(_grpc_parameters(output.parameters), f"requested output {output.name!r}", ())
        outputs.append(RequestedOutput(output.name, binary=True))
    _check_unique([output.name for output in outputs], "requested output")
    return InferRequest(inputs, outputs, message.id, message.model_name, timeout_s=_timeout_s(parameters))


def _typed_contents(item: Any, where: str) -> list[Any]:
    if item.datatype not in CONTENTS_FIELDS:
        raise BadInput(f"{where}: {item.datatype} travels only as raw_input_contents")
    wanted = CONTENTS_FIELDS[item.datatype]
    filled = [f.name for f, _ in item.contents.ListFields()]
    if any(name != wanted for name in filled):
        raise BadInput(f"{where} is {item.datatype}, whose elements go in contents.{wanted}, not {filled[0]}")
    return list(getattr(item.contents, wanted))


def _grpc_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """InferParameter values as Python values (a parameter with no value set reads None)."""
    values = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, choice) if choice else None
    return values


def write_grpc(response: Any, outputs: Sequence[Tensor]) -> None:
    """Fill a ModelInferResponse's outputs, their elements in raw_output_contents (as Triton answers)."""
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        response.raw_output_contents.append(raw_bytes(tensor))
