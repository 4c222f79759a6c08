"""TF Serving's own Python client (tensorflow-serving-api), driven over stdin/stdout: the tests' real gRPC client.

Runs with the test-only environment's Python (.venv-tfclient: tensorflow-cpu and
tensorflow-serving-api, which the serving environment never holds), not as part of the
`harness` package: `.venv-tfclient/bin/python harness/tf_client.py HOST:PORT`. Each line on stdin
is one JSON command; each answer is one JSON line on stdout. Requests are built as TF Serving's
users build them (`tf.make_tensor_proto(list_of_png_bytes, shape=[n])`, `tf.train.Example`) and
answers are read as they read them (`tf.make_ndarray`). harness/tfserving_client.py runs it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices would bury the answers

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import descriptor_pool, json_format  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MAX_MESSAGE = 256 * 1024 * 1024  # the client's own limits stay out of the way: the server's are under test


def images_of(command: dict) -> list[bytes]:
    if "filler_bytes" in command:  # bytes that are no image, to test size limits
        return [b"\0" * command["filler_bytes"]]
    if "noise_png" in command:  # one PNG of random pixels, [height, width]: about 3 bytes a pixel
        pixels = tf.random.uniform([*command["noise_png"], 3], maxval=256, dtype=tf.int32, seed=13)
        return [tf.io.encode_png(tf.cast(pixels, tf.uint8)).numpy()]
    return [base64.b64decode(image) for image in command["images"]]


def model_spec(spec, command: dict) -> None:
    spec.name = command.get("model", "")
    if command.get("version") is not None:
        spec.version.value = command["version"]
    if command.get("version_label"):
        spec.version_label = command["version_label"]
    spec.signature_name = command.get("signature_name", "")


def spec_dict(spec) -> dict:
    return {"name": spec.name, "version": spec.version.value, "signature_name": spec.signature_name}


class Client:
    """TF Serving's stubs on one channel per server address (a command may name another with "address")."""

    def __init__(self, address: str) -> None:
        self.address, self.channels = address, {}

    def channel(self, command: dict) -> grpc.Channel:
        address = command.get("address", self.address)
        if address not in self.channels:
            options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
            self.channels[address] = grpc.insecure_channel(address, options=options)
        return self.channels[address]

    def predictions(self, command: dict) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel(command))

    def predict_request(self, command: dict, images: list[bytes]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        model_spec(request.model_spec, command)
        if command.get("dtype") == "float":
            tensor = tf.make_tensor_proto([1.0] * len(images), shape=[len(images)])
        else:
            tensor = tf.make_tensor_proto(images, shape=command.get("shape", [len(images)]))
        request.inputs[command.get("input_name", "image_bytes")].CopyFrom(tensor)
        request.output_filter.extend(command.get("output_filter", []))
        return request

    def predict(self, command: dict) -> dict:
        response = self.predictions(command).Predict(
            self.predict_request(command, images_of(command)), timeout=command.get("timeout", 120)
        )
        outputs = {}
        for name, tensor in response.outputs.items():
            array = tf.make_ndarray(tensor)
            outputs[name] = {
                "dtype": tf.dtypes.as_dtype(tensor.dtype).name,
                "shape": list(array.shape),
                "values": array.tolist(),
            }
        return {"model_spec": spec_dict(response.model_spec), "outputs": outputs}

    def examples_input(self, command: dict) -> input_pb2.Input:
        name = command.get("feature_name", "image_bytes")
        examples = [
            tf.train.Example(
                features=tf.train.Features(
                    feature={name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
                )
            )
            for image in images_of(command)
        ]
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))

    def classify(self, command: dict) -> dict:
        request = classification_pb2.ClassificationRequest(input=self.examples_input(command))
        model_spec(request.model_spec, command)
        response = self.predictions(command).Classify(request, timeout=command.get("timeout", 120))
        results = [[[c.label, c.score] for c in classes.classes] for classes in response.result.classifications]
        return {"model_spec": spec_dict(response.model_spec), "results": results}

    def regress(self, command: dict) -> dict:
        request = regression_pb2.RegressionRequest(input=self.examples_input(command))
        model_spec(request.model_spec, command)
        response = self.predictions(command).Regress(request, timeout=command.get("timeout", 120))
        return {"model_spec": spec_dict(response.model_spec), "results": [r.value for r in response.result.regressions]}

    def metadata(self, command: dict) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=command.get("fields", ["signature_def"])
        )
        model_spec(request.model_spec, command)
        response = self.predictions(command).GetModelMetadata(request, timeout=command.get("timeout", 30))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        unpacked = response.metadata["signature_def"].Unpack(signatures)
        return {
            "model_spec": spec_dict(response.model_spec),
            "type_url": response.metadata["signature_def"].type_url,
            "unpacked": unpacked,
            "signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True),
        }

    def status(self, command: dict) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest()
        model_spec(request.model_spec, command)
        response = model_service_pb2_grpc.ModelServiceStub(self.channel(command)).GetModelStatus(
            request, timeout=command.get("timeout", 30)
        )
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def load(self, command: dict) -> dict:
        """`clients` threads, each with its own stub, send Predict calls of 1..max_instances random images for `seconds`."""
        images, answers, lock = images_of(command), [], threading.Lock()
        deadline = time.monotonic() + command["seconds"]

        def client(index: int) -> None:
            rng = random.Random(command.get("seed", 0) * 1000 + index)
            stub = self.predictions(command)
            while time.monotonic() < deadline:
                chosen = [rng.randrange(len(images)) for _ in range(rng.randint(1, command["max_instances"]))]
                request = self.predict_request(command, [images[i] for i in chosen])
                try:
                    response = stub.Predict(request, timeout=command.get("timeout", 120))
                    answer = {"chosen": chosen, "values": tf.make_ndarray(response.outputs["probabilities"]).tolist()}
                except grpc.RpcError as error:
                    answer = {"chosen": chosen, "code": error.code().name, "details": error.details()}
                with lock:
                    answers.append(answer)

        with ThreadPoolExecutor(command["clients"]) as pool:
            list(pool.map(client, range(command["clients"])))
        return {"answers": answers}


def describe(command: dict) -> dict:
    """TF Serving's own descriptors of the named messages, enums and services: what the wire format is."""
    pool = descriptor_pool.Default()
    messages = {}
    for name in command.get("messages", []):
        message = pool.FindMessageTypeByName(name)
        messages[name] = {
            field.name: [field.number, field.type, (field.message_type or field.enum_type or message).full_name
                         if (field.message_type or field.enum_type) else "", field.is_repeated]
            for field in message.fields
        }  # fmt: skip
    enums = {
        name: {value.name: value.number for value in pool.FindEnumTypeByName(name).values}
        for name in command.get("enums", [])
    }
    services = {
        service.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
        for service in (
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        )
    }
    return {"messages": messages, "enums": enums, "services": services}


def main() -> int:
    client = Client(sys.argv[1])
    print(json.dumps({"ready": tf.__version__}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            call = describe if command["call"] == "describe" else getattr(client, command["call"])
            answer = {"ok": True, **call(command)}
        except grpc.RpcError as error:
            answer = {"ok": False, "code": error.code().name, "details": error.details()}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
