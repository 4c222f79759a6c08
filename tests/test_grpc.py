"""TF Serving's own gRPC client (tensorflow-serving-api) against the real gRPC front, shim and TorchServe.

The client runs in its own environment (.venv-tfclient, see harness/tf_client.py) against the
gRPC front that `scripts/serve` started beside the shim (conftest.py's session servers). Every
answer is compared with the REST shim's answer for the same images (exactly) and with
`learn.predict` (within 1e-4). Health, reflection and batch sharing use our own stubs.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_torchserve_handler import in_process

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.load import concurrently, expected_probabilities
from harness.servers import Servers, free_port
from harness.tfserving_client import TFServingClient

pytestmark = pytest.mark.e2e

# Each task kind the tests serve: model -> (output name, dtype as TF names it).
TASK_KINDS = {
    "digits": ("probabilities", "float32"),
    "classifier": ("probabilities", "float32"),
    "multilabel": ("probabilities", "float32"),
    "regressor": ("outputs", "float32"),
    "segmenter": ("mask", "int64"),
    "with_utils": ("probabilities", "float32"),
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def tf_client(torchserve, tmp_path_factory):
    client = TFServingClient(torchserve.grpc, tmp_path_factory.mktemp("tfclient") / "tf_client.log")
    yield client
    client.close()


@pytest.fixture(scope="module")
def samples(exported_learners) -> dict[str, list[bytes]]:
    """Three images per served model, from the images it was trained on (digits: the demo's samples)."""
    folders = {
        name: path.parent / ("samples" if name == "digits" else "images") for name, path in exported_learners.items()
    }
    return {name: [p.read_bytes() for p in sorted(folder.glob("*.png"))[:3]] for name, folder in folders.items()}


def png_of_size(side: int) -> bytes:
    """A black PNG: "with_utils" fails on 13×13 images (a model that breaks on some input)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def rest_predict(torchserve, model: str, images: list[bytes], **body) -> dict:
    response = requests.post(
        f"{torchserve.shim}/v1/models/{model}:predict",
        json={"instances": [{"b64": b64(image)} for image in images], **body},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def our_stub(torchserve) -> serving_grpc.PredictionServiceStub:
    return serving_grpc.PredictionServiceStub(grpc.insecure_channel(torchserve.grpc))


def our_predict_request(model: str, images: list[bytes]) -> serving.PredictRequest:
    tensor = TensorProto(
        dtype=DataType.DT_STRING,
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(images))]),
        string_val=images,
    )
    return serving.PredictRequest(model_spec=serving.ModelSpec(name=model), inputs={"image_bytes": tensor})


# --- Answers: the REST shim's, exactly, and learn.predict's ------------------------------------------------


@pytest.mark.parametrize("model", list(TASK_KINDS))
def test_predict_answers_exactly_the_rest_shims_answer_for_every_task_kind(tf_client, torchserve, samples, model):
    answer = tf_client.call("predict", images=samples[model], model=model)
    assert answer["ok"], answer
    name, dtype = TASK_KINDS[model]
    (output,) = answer["outputs"].items()
    assert output[0] == name and output[1]["dtype"] == dtype
    rest = rest_predict(torchserve, model, samples[model])["predictions"]
    assert np.array_equal(
        np.asarray(output[1]["values"]), np.asarray(rest, dtype=np.float32 if dtype == "float32" else np.int64)
    )
    assert output[1]["shape"] == list(np.asarray(rest).shape)
    assert answer["model_spec"] == {"name": model, "version": 1, "signature_name": "serving_default"}


@pytest.mark.parametrize("model", list(TASK_KINDS))
def test_predict_equals_learn_predict(tf_client, samples, loaded_learners, model):
    (output,) = tf_client.call("predict", images=samples[model], model=model)["outputs"].values()
    for image, answered in zip(samples[model], output["values"], strict=True):
        _, decoded, activated = in_process(loaded_learners[model], image)
        if model == "segmenter":
            assert np.array_equal(np.asarray(answered), decoded.numpy())
        else:
            assert np.asarray(answered) == pytest.approx(activated.numpy().reshape(np.shape(answered)), abs=1e-4)


def test_the_classes_signature_answers_the_rest_shims_class_indices(tf_client, torchserve, samples):
    answer = tf_client.call("predict", images=samples["digits"], model="digits", signature_name="classes")
    rest = rest_predict(torchserve, "digits", samples["digits"], signature_name="classes")["predictions"]
    assert answer["outputs"] == {"classes": {"dtype": "int64", "shape": [3], "values": rest}}
    assert answer["model_spec"]["signature_name"] == "classes"


def test_classify_answers_the_rest_shims_labels_and_scores(tf_client, torchserve, samples):
    answer = tf_client.call("classify", images=samples["classifier"], model="classifier")
    rest = requests.post(
        f"{torchserve.shim}/v1/models/classifier:classify",
        json={"examples": [{"image_bytes": {"b64": b64(image)}} for image in samples["classifier"]]},
        timeout=120,
    ).json()["results"]
    assert [[label for label, _ in result] for result in answer["results"]] == [[label for label, _ in r] for r in rest]
    assert np.array_equal(
        np.asarray([[s for _, s in r] for r in answer["results"]]), np.float32([[s for _, s in r] for r in rest])
    )


def test_regress_answers_the_rest_shims_values(tf_client, torchserve, samples):
    answer = tf_client.call("regress", images=samples["regressor"], model="regressor")
    rest = requests.post(
        f"{torchserve.shim}/v1/models/regressor:regress",
        json={"examples": [{"b64": b64(image)} for image in samples["regressor"]]},
        timeout=120,
    ).json()["results"]
    assert np.array_equal(np.float32(answer["results"]), np.float32(rest))


def test_an_input_under_another_name_is_answered_the_same(tf_client, samples):
    named = tf_client.call("predict", images=samples["digits"], model="digits")
    other = tf_client.call("predict", images=samples["digits"], model="digits", input_name="input_1")
    assert other["outputs"] == named["outputs"]


def test_a_named_version_answers_and_names_it(tf_client, samples):
    answer = tf_client.call("predict", images=samples["digits"][:1], model="digits", version=1)
    assert answer["ok"] and answer["model_spec"]["version"] == 1


def test_a_spec_without_a_model_name_goes_to_the_default_model(tf_client, samples):
    answer = tf_client.call("predict", images=samples["digits"][:1], model="")
    assert answer["ok"] and answer["model_spec"]["name"] == "digits"


# --- Metadata and status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["digits", "regressor", "segmenter"])
def test_metadata_is_the_rest_routes_signatures_in_a_signature_def_map(tf_client, torchserve, model):
    answer = tf_client.call("metadata", model=model)
    rest = requests.get(f"{torchserve.shim}/v1/models/{model}/metadata", timeout=60).json()
    assert answer["unpacked"] and answer["type_url"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert answer["signature_def"]["signature_def"] == rest["metadata"]["signature_def"]["signature_def"]
    assert answer["model_spec"]["name"] == model and answer["model_spec"]["version"] == 1


def test_metadata_without_a_field_is_an_invalid_argument(tf_client):
    answer = tf_client.call("metadata", model="digits", fields=[])
    assert answer["code"] == "INVALID_ARGUMENT" and "metadata_field" in answer["details"]


def test_status_of_a_ready_model_is_available(tf_client):
    assert tf_client.call("status", model="digits") == {
        "ok": True,
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}],  # error_code OK, no message
    }


# --- Errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, code, message",
    [
        ({"model": "digits", "images": [b"not an image"]}, "INVALID_ARGUMENT", "instance 0 is not an image"),
        (
            {"model": "digits", "dtype": "float"},
            "INVALID_ARGUMENT",
            "input 'image_bytes' is DT_FLOAT: this model takes 'image_bytes', a DT_STRING tensor",
        ),
        ({"model": "digits", "shape": [1, 1]}, "INVALID_ARGUMENT", "has shape [1, 1]"),
        ({"model": "digits", "signature_name": "nope"}, "INVALID_ARGUMENT", "unknown signature_name 'nope'"),
        ({"model": "regressor", "signature_name": "classes"}, "INVALID_ARGUMENT", "'classes' needs a classifier"),
        ({"model": "no_such_model"}, "NOT_FOUND", "model 'no_such_model' not found"),
        ({"model": "digits", "version": 7}, "NOT_FOUND", "model 'digits' has no version 7"),
        ({"model": "digits", "version_label": "stable"}, "NOT_FOUND", "version label 'stable' is not defined"),
        ({"model": "digits", "filler_bytes": 65 * 1024 * 1024}, "RESOURCE_EXHAUSTED", ""),
        ({"model": "with_utils", "images": [png_of_size(13)]}, "INTERNAL", "the model failed on this request's input"),
    ],
)
def test_errors_are_tf_servings_status_codes_with_the_rest_shims_messages(tf_client, samples, command, code, message):
    answer = tf_client.call("predict", **{"images": [samples["digits"][0]], **command})
    assert answer["ok"] is False and answer["code"] == code and message in answer["details"]


def test_the_clients_deadline_is_honoured(tf_client, samples):
    # "classifier" gathers each batch for 400 ms, longer than this client waits.
    answer = tf_client.call("predict", images=samples["classifier"][:1], model="classifier", timeout=0.2)
    assert answer["code"] == "DEADLINE_EXCEEDED"


def test_a_message_just_under_the_limit_is_answered(tf_client):
    # A 4400×4400 PNG of noise, about 58 MB (the limit is 64 MiB): the images body carries it raw, so
    # TorchServe (64 MiB too) takes it; base64 in JSON would have made it 77 MB.
    answer = tf_client.call("predict", noise_png=[4400, 4400], model="digits", timeout=300)
    assert answer["ok"], answer.get("details")
    assert answer["outputs"]["probabilities"]["shape"] == [1, 10]


# --- Batches: shared with REST, and a bad image fails alone ------------------------------------------------


def test_concurrent_grpc_and_rest_calls_share_one_torchserve_batch(torchserve, samples):
    images = samples["classifier"]
    stub = our_stub(torchserve)
    wanted = {"requests": 2, "instances": 3, "failed": 0}
    (grpc_answer, rest_answer), batches = torchserve.in_one_batch(
        lambda: concurrently(
            [
                lambda: stub.Predict(our_predict_request("classifier", images[:2]), timeout=60),
                lambda: rest_predict(torchserve, "classifier", images[2:]),
            ]
        ),
        wanted,
    )
    assert len(grpc_answer.outputs["probabilities"].float_val) == 2 * 3 and len(rest_answer["predictions"]) == 1
    assert wanted in batches


def test_a_bad_image_in_one_grpc_call_never_fails_another_call_in_its_batch(torchserve, samples, loaded_learners):
    good = samples["classifier"]
    stub = our_stub(torchserve)
    before = len(torchserve.batch_lines())

    def bad_call():
        try:
            return stub.Predict(our_predict_request("classifier", [good[0], b"not an image"]), timeout=60)
        except grpc.RpcError as error:
            return error

    bad, answer = concurrently([bad_call, lambda: stub.Predict(our_predict_request("classifier", good), timeout=60)])
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance 1 is not an image" in bad.details()
    wanted = {"requests": 2, "instances": 3, "failed": 1}
    assert wanted in torchserve.batches_since(before, wanted)
    probabilities = np.asarray(answer.outputs["probabilities"].float_val).reshape(3, -1)
    for image, answered in zip(good, probabilities, strict=True):
        assert answered == pytest.approx(in_process(loaded_learners["classifier"], image)[2].numpy(), abs=1e-4)


def test_sixteen_concurrent_tf_clients_get_every_answer_right(tf_client, samples, loaded_learners, exported_learners):
    images = [p.read_bytes() for p in sorted((exported_learners["digits"].parent / "samples").glob("*.png"))]
    expected = expected_probabilities(loaded_learners["digits"], images)
    result = tf_client.call("load", images=images, model="digits", clients=16, seconds=8, max_instances=8, seed=13)
    answers = result["answers"]
    assert len(answers) >= 16 and [a for a in answers if "code" in a] == []
    for answer in answers:
        assert len(answer["values"]) == len(answer["chosen"])
        for image, probabilities in zip(answer["chosen"], answer["values"], strict=True):
            assert probabilities == pytest.approx(expected[image], abs=1e-4)


# --- The wire format, health, reflection ----------------------------------------------------------------------


def test_our_messages_have_tf_servings_field_numbers_and_types(tf_client):
    from fastai_serving_protos import tensorflow_core_pb2, tensorflow_error_pb2

    ours = [
        *tensorflow_serving_pb2_messages(),
        *[
            tensorflow_core_pb2.DESCRIPTOR.message_types_by_name[name]
            for name in tensorflow_core_pb2.DESCRIPTOR.message_types_by_name
        ],
    ]
    ours += [nested for message in list(ours) for nested in message.nested_types if not nested.GetOptions().map_entry]
    enums = [
        tensorflow_core_pb2.DataType.DESCRIPTOR,
        tensorflow_error_pb2.Code.DESCRIPTOR,
        serving.ModelVersionStatus.State.DESCRIPTOR,
    ]
    theirs = tf_client.call("describe", messages=[m.full_name for m in ours], enums=[e.full_name for e in enums])
    assert theirs["ok"], theirs
    for message in ours:
        for field in message.fields:
            type_name = (
                (field.message_type or field.enum_type).full_name if (field.message_type or field.enum_type) else ""
            )
            assert theirs["messages"][message.full_name][field.name] == [
                field.number,
                field.type,
                type_name,
                field.is_repeated,
            ], f"{message.full_name}.{field.name}"
    for enum in enums:
        assert {value.name: value.number for value in enum.values}.items() <= theirs["enums"][enum.full_name].items()
    for service in serving.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            wanted = [method.input_type.full_name, method.output_type.full_name]
            assert theirs["services"][service.full_name][method.name] == wanted


def tensorflow_serving_pb2_messages() -> list:
    return list(serving.DESCRIPTOR.message_types_by_name.values())


def test_health_says_serving_once_every_model_has_a_ready_worker(torchserve):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(torchserve.grpc))
    answer = health.Check(health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(torchserve):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(torchserve.grpc))
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "grpc.health.v1.Health"} <= {
        service.name for service in answer.list_services_response.service
    }


# --- The gRPC front's own process -------------------------------------------------------------------------


def start_front(tmp_path, **settings: str) -> tuple[subprocess.Popen, str]:
    """`python -m fastai_serving_shim.grpc.server` alone, with FASTAI_SERVING_* settings, as scripts/serve starts it."""
    port = free_port()
    environment = {
        **os.environ,
        "FASTAI_SERVING_HOST": "127.0.0.1",
        "FASTAI_SERVING_GRPC_PORT": str(port),
        **{f"FASTAI_SERVING_{name.upper()}": value for name, value in settings.items()},
    }
    with open(tmp_path / "grpc.out", "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastai_serving_shim.grpc.server"],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    return process, f"127.0.0.1:{port}"


def test_torchserve_down_is_unavailable(tf_client, tmp_path, samples, nothing_listens):
    nothing_there = f"http://127.0.0.1:{nothing_listens}"
    process, address = start_front(tmp_path, upstream=nothing_there, management=nothing_there, default_model="digits")
    try:
        predict = tf_client.call("predict", images=samples["digits"][:1], model="digits", address=address)
        assert predict["code"] == "UNAVAILABLE" and "unreachable" in predict["details"]
        status = tf_client.call("status", model="digits", address=address)
        assert status["code"] == "UNAVAILABLE"
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_sent_upstream(pid: int, upstream: str, timeout_s: float = 60) -> None:
    """Until the front (a fresh process: its first call opens its first connection) is connected to TorchServe's inference port."""
    port = int(upstream.rsplit(":", 1)[1])
    give_up = time.monotonic() + timeout_s
    front = psutil.Process(pid)
    connections = getattr(front, "net_connections", None) or front.connections  # psutil 6 renamed it
    while not any(c.raddr and c.raddr.port == port for c in connections(kind="tcp")):
        assert time.monotonic() < give_up, f"the call did not reach TorchServe within {timeout_s} s"
        time.sleep(0.05)


def test_sigterm_lets_the_call_in_flight_finish_then_exits_cleanly(torchserve, tmp_path, samples):
    process, address = start_front(tmp_path, upstream=torchserve.inference, management=torchserve.management)
    stub = serving_grpc.PredictionServiceStub(grpc.insecure_channel(address))
    # "classifier" gathers each batch for 400 ms: the call is in flight when SIGTERM arrives.
    in_flight = stub.Predict.future(our_predict_request("classifier", samples["classifier"][:1]), timeout=60)
    wait_until_sent_upstream(process.pid, torchserve.inference)
    process.send_signal(signal.SIGTERM)
    assert len(in_flight.result().outputs["probabilities"].float_val) == 3
    assert process.wait(timeout=30) == 0


def test_serve_without_grpc_starts_no_grpc_front(digits_only_store, tmp_path):
    # The port is held (bound, never listening) so no other process on the machine can answer on it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        servers = Servers(
            model_store=digits_only_store, log_dir=tmp_path / "logs", with_grpc=False, grpc_port=held.getsockname()[1]
        ).start(["digits"])
        try:
            assert requests.get(f"{servers.shim}/v1/models/digits", timeout=5).status_code == 200
            with pytest.raises(ConnectionRefusedError):  # nothing listens on the gRPC port
                socket.create_connection(("127.0.0.1", held.getsockname()[1]), timeout=30).close()
            assert "gRPC" not in (servers.log_dir / "serve.out").read_text()
        finally:
            assert servers.stop() == 0
