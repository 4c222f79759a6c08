"""`--protocol grpc`: TF Serving's PredictionService/Predict, on any TF-Serving gRPC server (port 8500).

The images go as TF Serving's users send them: one DT_STRING tensor of shape [n] holding the
encoded images, under the input `image_bytes` (the REST form's instance key). The answer's
tensors come back in the shape TF Serving's REST `predictions` has for the same model (a list,
one entry per image), so every sink writes the same results for both protocols. gRPC status
codes are mapped onto what the runner does (predictor.py's docstring): see `failure`.
Imported only for `--protocol grpc`: it needs grpcio and protobuf (`pip install './client[grpc]'`).
"""

from __future__ import annotations

import base64
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto
from fastai_serving_protos.tensorflow_serving_pb2_grpc import PredictionServiceStub

from . import defaults
from .concurrency import UNOBSERVED, Observer
from .credentials import NO_CREDENTIALS, Credentials
from .predictor import InputRejected, ServerFailed, classes_in, predictions_tried
from .retry import DEFAULT_BACKOFF, Backoff, Refused, Retryable, retry_after_s

PUSHBACK = "grpc-retry-pushback-ms"  # gRFC A6: a refusal's hint, in milliseconds, in the trailing metadata
IMAGE_INPUT = "image_bytes"  # TF Serving's input name for encoded images, as chip-n-scale's models take them
FASTAI_METADATA = "fastai"  # fastai-serving's own GetModelMetadata field: a Struct with the task and the classes

StatusCode = grpc.StatusCode
# Worth another try: the server unreachable, busy or stopping, or the call out of time.
RETRYABLE = (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.ABORTED, StatusCode.CANCELLED)
# This request's input refused. INTERNAL: fastai-serving's gRPC front says so when the model failed on the
# input (REST's 500, which RestPredictor treats the same way).
INPUT = (StatusCode.INVALID_ARGUMENT, StatusCode.OUT_OF_RANGE, StatusCode.INTERNAL)
# RESOURCE_EXHAUSTED is a message over a size limit (this request is too big: input) or a busy server (a refusal).
OVER_A_SIZE_LIMIT = re.compile(r"larger than max|size limit|too large|over the limit|message length", re.IGNORECASE)

# Every dtype a prediction may come back as: the TensorProto field holding it, and its tensor_content format.
VALUE_FIELDS = {
    DataType.DT_FLOAT: ("float_val", "f"),
    DataType.DT_DOUBLE: ("double_val", "d"),
    DataType.DT_INT8: ("int_val", "b"),
    DataType.DT_UINT8: ("int_val", "B"),
    DataType.DT_INT16: ("int_val", "h"),
    DataType.DT_UINT16: ("int_val", "H"),
    DataType.DT_INT32: ("int_val", "i"),
    DataType.DT_INT64: ("int64_val", "q"),
    DataType.DT_BOOL: ("bool_val", "?"),
    DataType.DT_STRING: ("string_val", None),
}


def grpc_target(server: str) -> str:
    """host:port from `--server`: host:port, grpc://host:port or grpcs://host:port (TF Serving's gRPC port is 8500)."""
    target = server.removeprefix("grpcs://").removeprefix("grpc://").rstrip("/")
    if "://" in target:
        raise ValueError(
            f"--protocol grpc takes the gRPC address, host:port or grpc://host:port (TF Serving's gRPC port is "
            f"8500), not the URL {server!r}; for an http(s) URL use --protocol rest"
        )
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--server {server!r}: give the gRPC address with its port, e.g. 127.0.0.1:8500")
    return target


def predict_request(model: str | None, images: list[bytes]) -> serving.PredictRequest:
    """TF Serving's PredictRequest: the images under `image_bytes`; no model name asks for the server's default."""
    request = serving.PredictRequest()
    request.model_spec.SetInParent()  # TF Serving requires a model_spec, even one naming no model
    if model:
        request.model_spec.name = model
    tensor = request.inputs[IMAGE_INPUT]
    tensor.dtype = DataType.DT_STRING
    tensor.tensor_shape.dim.add(size=len(images))
    tensor.string_val.extend(images)
    return request


def values_of(tensor: TensorProto) -> list[Any]:
    """A tensor's values, flat, in row-major order, as Python numbers, booleans or strings."""
    if tensor.dtype not in VALUE_FIELDS:
        name = DataType.Name(tensor.dtype) if tensor.dtype in DataType.values() else str(tensor.dtype)
        raise ValueError(f"an output of dtype {name}, which predict-batch does not read")
    field, layout = VALUE_FIELDS[tensor.dtype]
    if tensor.tensor_content and layout is not None:  # TF Serving may send numbers packed, in the host's order
        values: list[Any] = [value for (value,) in struct.iter_unpack(f"<{layout}", tensor.tensor_content)]
    else:
        values = list(getattr(tensor, field))
    if tensor.dtype == DataType.DT_STRING:
        values = [text_of(value) for value in values]
    return values


def text_of(value: bytes) -> Any:
    """A string output as TF Serving's REST API writes it: text, or {"b64": ...} for bytes that are not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def rows_of(tensor: TensorProto) -> list[Any]:
    """A tensor of shape [n, ...] as n nested lists (or values), as TF Serving's REST predictions hold them."""
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if not shape:
        raise ValueError("a scalar output, which holds no prediction per image")
    values = values_of(tensor)
    size = 1
    for dim in shape:
        size *= dim
    if len(values) == 1 and size > 1:  # TensorFlow's shorthand: one value fills the tensor
        values = values * size
    if len(values) != size:
        raise ValueError(f"an output of shape {shape} holding {len(values)} values")
    return nest(values, shape)


def nest(values: Sequence[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(values)
    step = len(values) // shape[0] if shape[0] else 0
    return [nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def predictions_of(outputs: Mapping[str, TensorProto]) -> list[Any]:
    """TF Serving's REST `predictions` for these outputs: one output's rows; of several, {name: row} per image."""
    if not outputs:
        raise ValueError("no outputs")
    rows = {name: rows_of(tensor) for name, tensor in sorted(outputs.items())}
    if len(rows) == 1:
        return next(iter(rows.values()))
    counts = {len(values) for values in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"outputs of different lengths ({', '.join(f'{n}: {len(v)}' for n, v in rows.items())})")
    return [dict(zip(rows, row, strict=True)) for row in zip(*rows.values(), strict=True)]


def failure(
    code: StatusCode, details: str, metadata: Sequence[tuple[str, Any]], endpoint: str, model: str | None
) -> Exception:
    """What a gRPC error means for the run: InputRejected (this request's input), Retryable, or ServerFailed."""
    said = f"{code.name}: {details}" if details else code.name
    if code == StatusCode.INVALID_ARGUMENT and not model and "ModelSpec" in details:  # TF Serving's own
        return ServerFailed(f"{endpoint} needs a model name ({said}): give --model")
    if code == StatusCode.RESOURCE_EXHAUSTED and OVER_A_SIZE_LIMIT.search(details):
        return InputRejected(code.value[0], f"the server answered {said} (send fewer images a request: --batch)")
    if code in INPUT:
        return InputRejected(code.value[0], f"the server answered {said}")
    if code == StatusCode.RESOURCE_EXHAUSTED:
        return Refused(said, hint_s(metadata))
    if code in RETRYABLE:
        return Retryable(said, hint_s(metadata))
    return ServerFailed(f"{endpoint} answered {said}")


def channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials:
    """TLS to the server: its CA (default: the system's), and a client certificate where one is given."""

    def read(path) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(credentials.ca), read(credentials.key), read(credentials.cert))


def channel(target: str, tls: grpc.ChannelCredentials | None, options: list) -> grpc.Channel:
    return grpc.secure_channel(target, tls, options=options) if tls else grpc.insecure_channel(target, options=options)


def hint_s(metadata: Sequence[tuple[str, Any]]) -> float | None:
    """The server's wait before the next try, from the trailing metadata: grpc-retry-pushback-ms, or retry-after."""
    for key, value in metadata:
        if key.lower() == PUSHBACK:
            try:
                milliseconds = float(value)
            except (TypeError, ValueError):
                continue
            if milliseconds >= 0:
                return milliseconds / 1000
        if key.lower() == "retry-after":
            return retry_after_s(str(value))
    return None


class GrpcPredictor:
    """PredictionService/Predict on any TF-Serving gRPC server; no --model asks for the server's default model."""

    def __init__(
        self,
        server: str,
        model: str | None,
        stopping: threading.Event,
        backoff: Backoff = DEFAULT_BACKOFF,
        timeout_s: float = defaults.TIMEOUT_S,
        credentials: Credentials = NO_CREDENTIALS,
        observer: Observer = UNOBSERVED,
    ) -> None:
        self.target = grpc_target(server)
        tls = server.startswith("grpcs://") or credentials.wants_tls
        self.model = model
        self.endpoint = f"{'grpcs' if tls else 'grpc'}://{self.target} PredictionService/Predict, " + (
            f"model {model!r}" if model else "the default model"
        )
        self.stopping, self.backoff, self.timeout_s, self.observer = stopping, backoff, timeout_s, observer
        limit = defaults.GRPC_MAX_MESSAGE_MIB << 20
        self.metadata = (("authorization", credentials.authorization()),) if credentials.token else None
        self.channel = channel(
            self.target,
            channel_credentials(credentials) if tls else None,
            [
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                # Retries are paced by `backoff`; the channel must be reconnecting by the time the next one goes.
                ("grpc.initial_reconnect_backoff_ms", defaults.GRPC_RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", defaults.GRPC_MAX_RECONNECT_BACKOFF_MS),
            ],
        )
        self.stub = PredictionServiceStub(self.channel)  # one channel, shared by every sending thread

    def predict(self, images: list[bytes]) -> list[Any]:
        request = predict_request(self.model, images)
        return predictions_tried(
            lambda: self._call(request), len(images), self.endpoint, self.backoff, self.stopping, self.observer
        )

    def _call(self, request: serving.PredictRequest) -> list[Any]:
        # --timeout is kept here, not sent as the call's deadline (as REST sends no deadline header): a batch client
        # gains nothing from a place deep in the server's queue, and without a deadline fastai-serving keeps its
        # queue short and refuses the rest, which is what the concurrency follows. A call out of time is cancelled.
        call = self.stub.Predict.future(request, metadata=self.metadata)
        try:
            response = call.result(timeout=self.timeout_s)
        except grpc.FutureTimeoutError as error:
            call.cancel()
            raise Retryable(f"no answer within {self.timeout_s:g} s (--timeout)") from error
        except grpc.RpcError as error:
            raise failure(
                error.code(), error.details() or "", error.trailing_metadata() or (), self.endpoint, self.model
            ) from error
        try:
            return predictions_of(response.outputs)
        except ValueError as error:
            raise ServerFailed(f"{self.endpoint} answered {error}, not TF Serving's predictions") from error

    def description(self) -> dict | None:
        """fastai-serving's description of the model (GetModelMetadata's `fastai` field); None from other servers."""
        request = serving.GetModelMetadataRequest(metadata_field=[FASTAI_METADATA])
        request.model_spec.SetInParent()
        if self.model:
            request.model_spec.name = self.model
        try:
            response = self.stub.GetModelMetadata(request, timeout=defaults.METADATA_TIMEOUT_S, metadata=self.metadata)
            fastai = struct_pb2.Struct()
            if not response.metadata[FASTAI_METADATA].Unpack(fastai):
                return None
        except grpc.RpcError:
            return None
        return json_format.MessageToDict(fastai)

    def class_names(self) -> list[str] | None:
        """The classes from fastai-serving's metadata (GetModelMetadata's `fastai` field); None from other servers."""
        return classes_in(self.description())
