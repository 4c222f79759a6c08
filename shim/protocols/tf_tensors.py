"""TF Serving's messages to and from what the body contract and the handler speak: images in, answers out.

Requests: the encoded images of a DT_STRING tensor (Predict) or of tf.train.Examples (Classify,
Regress), checked here with messages naming what is wrong. Answers: the handler's JSON values as
tensors (`float_val`/`int64_val`, as TF Serving writes them), and the REST metadata's signatures
as a SignatureDefMap. Errors are `BadInput` (HTTP 400, INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from fastai_serving.contract.errors import BadInput
from fastai_serving.contract.vocabulary import IMAGE_INPUT
from fastai_serving_protos.tensorflow_core_pb2 import (
    DataType,
    Example,
    SignatureDef,
    TensorInfo,
    TensorProto,
    TensorShapeProto,
)
from fastai_serving_protos.tensorflow_serving_pb2 import Input, ModelSpec, SignatureDefMap

EXPECTED_INPUT = f"'{IMAGE_INPUT}', a DT_STRING tensor of shape [n] holding the encoded images"


def dtype_name(dtype: int) -> str:
    return DataType.Name(dtype) if dtype in DataType.values() else f"dtype {dtype}"


def shape_of(tensor: TensorProto) -> list[int]:
    return [dim.size for dim in tensor.tensor_shape.dim]


def images_of_inputs(inputs: Mapping[str, TensorProto]) -> list[bytes]:
    """The images of a PredictRequest: its one input, whatever its name, a DT_STRING tensor of shape [n]."""
    if len(inputs) != 1:
        sent = ", ".join(repr(name) for name in sorted(inputs)) or "none"
        raise BadInput(f"this model takes one input, {EXPECTED_INPUT}; the request has {len(inputs)} ({sent})")
    ((name, tensor),) = inputs.items()
    if tensor.dtype != DataType.DT_STRING:
        raise BadInput(f"input {name!r} is {dtype_name(tensor.dtype)}: this model takes {EXPECTED_INPUT}")
    shape = shape_of(tensor)
    if len(shape) != 1 or tensor.tensor_shape.unknown_rank:
        raise BadInput(f"input {name!r} has shape {shape}: this model takes {EXPECTED_INPUT}")
    if shape[0] != len(tensor.string_val):
        raise BadInput(f"input {name!r} has shape {shape} but holds {len(tensor.string_val)} values")
    if not tensor.string_val:
        raise BadInput(f"input {name!r} holds no image: send at least one")
    return list(tensor.string_val)


def images_of_examples(request_input: Input) -> list[bytes]:
    """The images of a Classify or Regress request: each tf.train.Example's `image_bytes` feature (or its one bytes feature)."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise BadInput("the request's input holds no examples: send an example_list of tf.train.Examples")
    examples = getattr(request_input, kind).examples
    context = request_input.example_list_with_context.context if kind == "example_list_with_context" else Example()
    if not examples:
        raise BadInput("the request's input holds no examples: send at least one")
    return [_example_image(example, context, index) for index, example in enumerate(examples)]


def _example_image(example: Example, context: Example, index: int) -> bytes:
    features = {**context.features.feature, **example.features.feature}  # the example's own win, as in TF Serving
    byte_features = {name: feature for name, feature in features.items() if feature.WhichOneof("kind") == "bytes_list"}
    if IMAGE_INPUT in byte_features:
        name = IMAGE_INPUT
    elif len(byte_features) == 1:
        (name,) = byte_features
    else:
        sent = ", ".join(repr(name) for name in sorted(features)) or "none"
        raise BadInput(
            f"example {index} needs a bytes feature '{IMAGE_INPUT}' holding the encoded image (it has {sent})"
        )
    values = byte_features[name].bytes_list.value
    if len(values) != 1:
        raise BadInput(f"example {index}: feature {name!r} holds {len(values)} values, one encoded image wanted")
    return values[0]


def tensor_of(values: Any, dtype: int) -> TensorProto:
    """A DT_FLOAT or DT_INT64 tensor of the handler's answers (lists of one shape), in the value fields TF Serving fills."""
    try:
        array = np.asarray(values, dtype=np.float32 if dtype == DataType.DT_FLOAT else np.int64)
    except ValueError:
        raise BadInput("the answers to this request's images differ in shape, so no one tensor holds them: "
                       "send images of one size per request") from None  # fmt: skip
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=size) for size in array.shape])
    tensor = TensorProto(dtype=dtype, tensor_shape=shape)
    (tensor.float_val if dtype == DataType.DT_FLOAT else tensor.int64_val).extend(array.ravel().tolist())
    return tensor


def model_spec(name: str, version: str, signature_name: str | None = None) -> ModelSpec:
    """A response's ModelSpec: the model, the version that answered (when it is a number), the signature."""
    spec = ModelSpec(name=name)
    if version.isdigit():
        spec.version.value = int(version)
    if signature_name is not None:
        spec.signature_name = signature_name
    return spec


def signature_def_map(signature_defs: Mapping[str, Any]) -> SignatureDefMap:
    """The REST metadata's `signature_def` (JSON) as TF Serving's SignatureDefMap: the same signatures."""
    return SignatureDefMap(
        signature_def={
            key: SignatureDef(
                inputs=_tensor_infos(signature["inputs"]),
                outputs=_tensor_infos(signature["outputs"]),
                method_name=signature["method_name"],
            )
            for key, signature in signature_defs.items()
        }
    )


def _tensor_infos(infos: Mapping[str, Any]) -> dict[str, TensorInfo]:
    return {
        alias: TensorInfo(
            name=info["name"],
            dtype=DataType.Value(info["dtype"]),
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=int(d["size"])) for d in _dims(info)]),
        )
        for alias, info in infos.items()
    }


def _dims(info: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return info.get("tensor_shape", {}).get("dim", [])


def struct_of(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON object as google.protobuf.Struct (the fastai metadata: task, classes, input, precision)."""
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct
