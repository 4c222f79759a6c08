"""The gRPC front in-process: a real gRPC server on a loopback port, our own stubs, the real service over a typed
stand-in for TorchServe.

The stand-in (tests/fake_torchserve.py, as in tests/test_shim_app.py) answers from a table and records every call,
so these tests show what the gRPC front sends upstream and how each answer and failure becomes a TF Serving
message or status code.
tests/test_grpc.py drives the same server with TF Serving's own client against a real TorchServe.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
from fake_torchserve import DESCRIBED, version
from fake_torchserve import FakeTorchServe as TableOfModels
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY, generate_latest
from servicer_deadlines import time_remaining_around

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import Failure, ServingError
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE
from fastai_serving.contract.vocabulary import MULTI_LABEL
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import (
    DataType,
    Example,
    Feature,
    Features,
    TensorProto,
    TensorShapeProto,
)
from fastai_serving_shim.calls import Description
from fastai_serving_shim.grpc.errors import GRPC_CODE
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.grpc.stopping import StopGate
from fastai_serving_shim.grpc.tf_serving import PredictionService
from fastai_serving_shim.protocols.tf_serving import metadata_body
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import Answer, HandlerError

PNG = b"\x89PNG\r\n\x1a\n-pretend-image"


def answered(body: dict, model_version: str = "1.0", task: str = "classification") -> Answer:
    return Answer(json.dumps(body).encode(), model_version, task)


@dataclass
class FakeTorchServe(TableOfModels):
    """The table of models; `answer` makes each prediction's answer from the images sent. Records calls."""

    answer: object = None  # a function of (images, verb, signature_name) -> Answer, or a ServingError to raise
    hold_first: bool = False  # the first prediction waits, once `entered` is set, until `release` is
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def infer(self, model, version, body, content_type, verb, timeout_s, deadline=None, request_id="") -> Answer:
        self._versions(model)
        request = read_body(body, verb)
        self.calls.append(
            ("predict", model, version, request.instances, verb, request.signature_name, content_type, timeout_s)
        )
        if self.hold_first and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(timeout=120), "the test never released the held prediction"
        if isinstance(self.answer, ServingError):
            raise self.answer
        if self.answer is not None:
            return self.answer(request.instances, verb, request.signature_name)
        return self.default_answer(request.instances, verb, request.signature_name)

    def default_answer(self, images: list[bytes], verb: str, signature_name: str) -> Answer:
        if verb == "classify":
            return answered({"results": [[["cat", 0.25], ["dog", 0.75]] for _ in images]})
        if verb == "regress":
            return answered({"results": [1.5 for _ in images]}, task="regression")
        if signature_name == "classes":
            return answered({"predictions": [1 for _ in images]})
        return answered({"predictions": [[0.25, 0.75] for _ in images]})


@pytest.fixture
def fake() -> FakeTorchServe:
    return FakeTorchServe()


def serve(fake: FakeTorchServe, **settings) -> GrpcFront:
    chosen = Settings(**{"host": "127.0.0.1", "grpc_port": 0, **settings})
    return GrpcFront(chosen, Service(chosen, fake)).start()


@pytest.fixture
def front(fake):
    running = serve(fake)
    yield running
    running.stop(grace_s=0)


@pytest.fixture
def channel(front):
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as opened:
        yield opened


def predictions(channel) -> serving_grpc.PredictionServiceStub:
    return serving_grpc.PredictionServiceStub(channel)


def images_tensor(images: list[bytes], dtype: int = DataType.DT_STRING, shape: list[int] | None = None) -> TensorProto:
    dims = [TensorShapeProto.Dim(size=size) for size in ([len(images)] if shape is None else shape)]
    return TensorProto(dtype=dtype, tensor_shape=TensorShapeProto(dim=dims), string_val=images)


def predict_request(model: str = "digits", images: list[bytes] | None = None, **spec) -> serving.PredictRequest:
    return serving.PredictRequest(
        model_spec=serving.ModelSpec(name=model, **spec), inputs={"image_bytes": images_tensor(images or [PNG])}
    )


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)
    return error.value


def example(image: bytes, name: str = "image_bytes") -> Example:
    return Example(features=Features(feature={name: Feature(bytes_list={"value": [image]})}))


# --- Predict -----------------------------------------------------------------------------------------------


def test_predict_sends_the_images_as_they_came_in_one_upstream_request(fake, channel):
    response = predictions(channel).Predict(predict_request(images=[PNG, b"second"]), timeout=10)
    ((_, model, version, images, verb, signature, content_type, _),) = [c for c in fake.calls if c[0] == "predict"]
    assert (model, version, images, verb, signature) == ("digits", None, [PNG, b"second"], "predict", "")
    assert content_type == IMAGES_CONTENT_TYPE
    probabilities = response.outputs["probabilities"]
    assert probabilities.dtype == DataType.DT_FLOAT
    assert [d.size for d in probabilities.tensor_shape.dim] == [2, 2]
    assert list(probabilities.float_val) == [0.25, 0.75, 0.25, 0.75]


def test_predict_names_the_model_the_version_that_answered_and_the_signature(channel):
    response = predictions(channel).Predict(predict_request(), timeout=10)
    assert response.model_spec.name == "digits" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_a_version_in_the_model_spec_reaches_torchserves_version(fake, channel):
    fake.served["digits"].append(version("2.0"))
    fake.answer = lambda images, verb, signature: answered({"predictions": [[0.5, 0.5]]}, model_version="2.0")
    request = predict_request()
    request.model_spec.version.value = 2
    response = predictions(channel).Predict(request, timeout=10)
    assert fake.calls[-1][:3] == ("predict", "digits", "2.0") and response.model_spec.version.value == 2


def test_an_input_of_another_name_is_taken_the_same_way(fake, channel):
    request = serving.PredictRequest(
        model_spec=serving.ModelSpec(name="digits"), inputs={"input_1": images_tensor([PNG])}
    )
    predictions(channel).Predict(request, timeout=10)
    assert fake.calls[-1][3] == [PNG]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "this model takes one input, 'image_bytes', a DT_STRING tensor of shape [n]"),
        ({"a": images_tensor([PNG]), "b": images_tensor([PNG])}, "the request has 2 ('a', 'b')"),
        ({"image_bytes": TensorProto(dtype=DataType.DT_FLOAT, float_val=[1.0])}, "input 'image_bytes' is DT_FLOAT"),
        ({"image_bytes": images_tensor([PNG], shape=[1, 1])}, "input 'image_bytes' has shape [1, 1]"),
        ({"image_bytes": images_tensor([PNG, PNG], shape=[3])}, "has shape [3] but holds 2 values"),
        ({"image_bytes": images_tensor([])}, "input 'image_bytes' holds no image"),
    ],
)
def test_inputs_it_cannot_use_are_invalid_arguments_naming_the_expected_one(fake, channel, inputs, message):
    request = serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"), inputs=inputs)
    error = refused(predictions(channel).Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert fake.count("predict") == 0


def test_the_classes_signature_answers_class_indices_as_int64(fake, channel):
    response = predictions(channel).Predict(predict_request(images=[PNG] * 3, signature_name="classes"), timeout=10)
    assert fake.calls[-1][5] == "classes"
    classes = response.outputs["classes"]
    assert classes.dtype == DataType.DT_INT64 and list(classes.int64_val) == [1, 1, 1]
    assert [d.size for d in classes.tensor_shape.dim] == [3] and response.model_spec.signature_name == "classes"


def test_segmentation_answers_the_class_index_mask_as_int64(fake, channel):
    fake.described = DESCRIBED["segmentation"]
    fake.answer = lambda images, verb, signature: answered(
        {"predictions": [[[0, 1], [1, 0]] for _ in images]}, task="segmentation"
    )
    mask = predictions(channel).Predict(predict_request(images=[PNG, PNG]), timeout=10).outputs["mask"]
    assert mask.dtype == DataType.DT_INT64 and [d.size for d in mask.tensor_shape.dim] == [2, 2, 2]
    assert list(mask.int64_val) == [0, 1, 1, 0] * 2


def test_regression_answers_its_values_as_outputs(fake, channel):
    fake.described = DESCRIBED["regression"]
    fake.answer = lambda images, verb, signature: answered({"predictions": [[1.5], [2.5]]}, task="regression")
    outputs = predictions(channel).Predict(predict_request(images=[PNG, PNG]), timeout=10).outputs["outputs"]
    assert outputs.dtype == DataType.DT_FLOAT and list(outputs.float_val) == [1.5, 2.5]


def test_class_indices_of_a_multi_label_model_are_refused_before_inference_for_no_tensor_holds_them(fake, channel):
    fake.described = DESCRIBED[MULTI_LABEL]
    error = refused(predictions(channel).Predict, predict_request(images=[PNG, PNG], signature_name="classes"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "use serving_default" in error.details()
    assert fake.count("predict") == 0


def test_answers_of_different_shapes_are_refused_saying_why(fake, channel):
    fake.described = DESCRIBED["segmentation"]
    fake.answer = lambda images, verb, signature: answered({"predictions": [[[0]], [[0, 1]]]}, task="segmentation")
    error = refused(predictions(channel).Predict, predict_request(images=[PNG, PNG]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "one size per request" in error.details()


def test_an_output_filter_names_the_signatures_output(channel):
    request = predict_request()
    request.output_filter.append("probabilities")
    assert set(predictions(channel).Predict(request, timeout=10).outputs) == {"probabilities"}
    request.output_filter[:] = ["scores"]
    error = refused(predictions(channel).Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "one output is 'probabilities'" in error.details()


def test_a_wrong_output_filter_is_refused_before_inference(fake, channel):
    request = predict_request()
    request.output_filter[:] = ["scores"]
    error = refused(predictions(channel).Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and fake.count("predict") == 0


def test_each_call_is_counted_in_the_fronts_request_metrics(channel):
    labels = {"front": "grpc", "protocol": "tfserving", "model": "digits", "route": "PredictionService/Predict"}
    before = requests_counted(**labels, verb="predict", status="OK")
    predictions(channel).Predict(predict_request(), timeout=10)
    assert requests_counted(**labels, verb="predict", status="OK") == before + 1


def test_a_made_up_model_never_becomes_a_metrics_label(fake, channel):
    refused(predictions(channel).Predict, predict_request(model="made_up_xyz"))
    assert "made_up_xyz" not in generate_latest(REGISTRY).decode()


def requests_counted(**labels: str) -> float:
    return REGISTRY.get_sample_value("fastai_serving_requests_total", labels) or 0.0


def test_the_grpc_front_imports_no_flask():
    check = "import sys, fastai_serving_shim.grpc.server; assert 'flask' not in sys.modules, 'flask imported'"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).returncode == 0


def test_a_model_spec_without_a_name_goes_to_the_default_model_as_analyze(fake, channel):
    predictions(channel).Predict(predict_request(model=""), timeout=10)
    assert fake.calls[-1][:2] == ("predict", "digits")


def test_with_several_models_and_no_default_a_nameless_spec_is_not_found_saying_how_to_choose(fake, channel):
    fake.served["buildings"] = [version("1.0")]
    error = refused(predictions(channel).Predict, predict_request(model=""))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "FASTAI_SERVING_DEFAULT_MODEL" in error.details()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "nothing_here"}, "model 'nothing_here' not found"),
        ({"name": ".."}, "model names are letters"),
        ({"name": "digits", "version_label": "stable"}, "version label 'stable' is not defined"),
        ({"name": "digits", "version": {"value": 7}}, "model 'digits' has no version 7"),
    ],
)
def test_unknown_models_versions_and_labels_are_not_found(fake, channel, spec, message):
    request = serving.PredictRequest(model_spec=spec, inputs={"image_bytes": images_tensor([PNG])})
    error = refused(predictions(channel).Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and message in error.details()


@pytest.mark.parametrize(
    "failure, code",
    [
        (
            HandlerError("instance 1 is not an image this server can decode", Failure.BAD_INPUT, "1.0"),
            "INVALID_ARGUMENT",
        ),
        (HandlerError("unknown signature_name 'x': this model serves", Failure.BAD_INPUT, "1.0"), "INVALID_ARGUMENT"),
        (
            HandlerError("the model failed on this request's input (ValueError)", Failure.MODEL_FAILED, "1.0"),
            "INTERNAL",
        ),
        (ServingError("model 'digits' cannot serve right now (503); retry later", Failure.UNAVAILABLE), "UNAVAILABLE"),
        (ServingError("request body over TorchServe's size limit", Failure.TOO_LARGE), "RESOURCE_EXHAUSTED"),
        (ServingError("TorchServe is unreachable; retry later", Failure.UNAVAILABLE), "UNAVAILABLE"),
        (ServingError("model 'digits' did not answer within 0.5 s", Failure.TIMEOUT), "DEADLINE_EXCEEDED"),
    ],
)
def test_errors_are_tf_servings_status_codes_with_the_rest_shims_messages(fake, channel, failure, code):
    fake.answer = failure
    error = refused(predictions(channel).Predict, predict_request())
    assert error.code() == getattr(grpc.StatusCode, code) and error.details() == failure.message


def test_the_clients_deadline_bounds_the_upstream_request(fake, monkeypatch):
    readings = time_remaining_around(monkeypatch, PredictionService, "Predict")
    running = serve(fake)
    deadline_s = Settings().predict_timeout_s / 4  # far from the predict timeout, which would bound it instead
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            predictions(opened).Predict(predict_request(), timeout=deadline_s)
    finally:
        running.stop(grace_s=0)
    timeout_s = fake.calls[-1][7]
    before, after = readings
    # What was left of the deadline gRPC delivered (the client's, sent as a rounded timeout) when the front read
    # it, between the servicer's own readings around it; not the predict timeout.
    assert after <= timeout_s <= before < Settings().predict_timeout_s


def test_a_call_without_a_deadline_is_bounded_by_the_predict_timeout_alone(fake, channel):
    predictions(channel).Predict(predict_request())
    assert fake.calls[-1][7] >= Settings().predict_timeout_s  # the client takes the shorter of the two


@pytest.mark.parametrize(
    "answer",
    [
        lambda images, verb, signature: Answer(b'{"predictions": [[0.5, 0.5]]}', version=""),
        HandlerError("the image is not an image this server can decode", Failure.BAD_INPUT, version=""),
    ],
)  # the second: the whole images body read as one image, by a handler that names no version
def test_an_archive_from_before_the_grpc_front_is_refused_asking_for_a_rebuild(fake, channel, answer):
    fake.answer = answer
    error = refused(predictions(channel).Predict, predict_request())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "scripts/make-archive" in error.details()


def test_a_message_over_the_limit_is_resource_exhausted_before_it_goes_upstream(fake):
    running = serve(fake, max_body_bytes=1024)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            error = refused(predictions(opened).Predict, predict_request(images=[b"x" * 2048]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and fake.count("predict") == 0
    finally:
        running.stop(grace_s=0)


def test_an_answer_over_the_limit_is_resource_exhausted(fake):
    fake.answer = lambda images, verb, signature: answered({"predictions": [[0.5] * 1000 for _ in images]})
    running = serve(fake, max_body_bytes=1024)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            error = refused(predictions(opened).Predict, predict_request())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(grace_s=0)


# --- Classify and Regress -------------------------------------------------------------------------------


def test_classify_takes_the_image_bytes_feature_of_each_example(fake, channel):
    request = serving.ClassificationRequest(
        model_spec=serving.ModelSpec(name="digits"),
        input=serving.Input(example_list=serving.ExampleList(examples=[example(PNG), example(b"two", "img")])),
    )
    response = predictions(channel).Classify(request, timeout=10)
    assert fake.calls[-1][3:5] == ([PNG, b"two"], "classify")
    (first, second) = response.result.classifications
    assert [(c.label, c.score) for c in first.classes] == [("cat", 0.25), ("dog", 0.75)]
    assert response.model_spec.name == "digits" and response.model_spec.version.value == 1


def test_classify_merges_the_context_example_into_each_example(fake, channel):
    with_context = serving.ExampleListWithContext(examples=[Example()], context=example(PNG))
    request = serving.ClassificationRequest(
        model_spec=serving.ModelSpec(name="digits"), input=serving.Input(example_list_with_context=with_context)
    )
    predictions(channel).Classify(request, timeout=10)
    assert fake.calls[-1][3] == [PNG]


@pytest.mark.parametrize(
    "request_input, message",
    [
        (serving.Input(), "holds no examples"),
        (serving.Input(example_list=serving.ExampleList()), "holds no examples"),
        (
            serving.Input(example_list=serving.ExampleList(examples=[Example()])),
            "example 0 needs a bytes feature 'image_bytes'",
        ),
        (
            serving.Input(
                example_list=serving.ExampleList(
                    examples=[
                        Example(features=Features(feature={"image_bytes": Feature(bytes_list={"value": [PNG, PNG]})}))
                    ]
                )
            ),
            "holds 2 values, one encoded image wanted",
        ),
    ],
)
def test_examples_without_one_image_are_invalid_arguments(fake, channel, request_input, message):
    request = serving.ClassificationRequest(model_spec=serving.ModelSpec(name="digits"), input=request_input)
    error = refused(predictions(channel).Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert fake.count("predict") == 0


def test_regress_answers_one_value_per_example(fake, channel):
    fake.described = DESCRIBED["regression"]
    request = serving.RegressionRequest(
        model_spec=serving.ModelSpec(name="digits"),
        input=serving.Input(example_list=serving.ExampleList(examples=[example(PNG)] * 2)),
    )
    response = predictions(channel).Regress(request, timeout=10)
    assert fake.calls[-1][4] == "regress" and [r.value for r in response.result.regressions] == [1.5, 1.5]


def test_regress_of_a_model_with_several_targets_is_refused_naming_predict(fake, channel):
    fake.described = DESCRIBED["regression"]
    fake.answer = lambda images, verb, signature: answered({"results": [[1.0, 2.0]]}, task="regression")
    request = serving.RegressionRequest(
        model_spec=serving.ModelSpec(name="digits"),
        input=serving.Input(example_list=serving.ExampleList(examples=[example(PNG)])),
    )
    error = refused(predictions(channel).Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "use Predict" in error.details()


# --- Metadata and status ----------------------------------------------------------------------------------


def test_metadata_answers_the_rest_routes_signatures_packed_in_any(channel):
    request = serving.GetModelMetadataRequest(
        model_spec=serving.ModelSpec(name="digits"), metadata_field=["signature_def"]
    )
    response = predictions(channel).GetModelMetadata(request, timeout=10)
    signatures = serving.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    description = Description("digits", "1", ("1",), DESCRIBED["classification"])
    rest = metadata_body(description)["metadata"]["signature_def"]["signature_def"]
    assert set(signatures.signature_def) == set(rest) == {"serving_default", "classes"}
    default = signatures.signature_def["serving_default"]
    assert (
        default.inputs["image_bytes"].dtype == DataType.DT_STRING
        and default.method_name == "tensorflow/serving/predict"
    )
    assert [d.size for d in default.outputs["probabilities"].tensor_shape.dim] == [-1, 2]
    assert signatures.signature_def["classes"].outputs["classes"].dtype == DataType.DT_INT64
    assert response.model_spec.name == "digits" and response.model_spec.version.value == 1


def test_metadata_field_fastai_answers_the_task_and_classes(channel):
    request = serving.GetModelMetadataRequest(model_spec=serving.ModelSpec(name="digits"), metadata_field=["fastai"])
    described = struct_pb2.Struct()
    assert predictions(channel).GetModelMetadata(request, timeout=10).metadata["fastai"].Unpack(described)
    assert described["task"] == "classification" and list(described["classes"]) == ["cat", "dog"]


@pytest.mark.parametrize(
    "fields, message", [([], "at least one metadata_field"), (["graph"], "'graph' is not supported")]
)
def test_metadata_needs_a_supported_field(channel, fields, message):
    request = serving.GetModelMetadataRequest(model_spec=serving.ModelSpec(name="digits"), metadata_field=fields)
    error = refused(predictions(channel).GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()


def test_status_is_available_from_a_ready_worker_and_loading_without_one(fake, channel):
    fake.served["digits"] = [version("1.0"), version("2.0", ready=False)]
    status = serving_grpc.ModelServiceStub(channel).GetModelStatus(
        serving.GetModelStatusRequest(model_spec=serving.ModelSpec(name="digits")), timeout=10
    )
    (one, two) = status.model_version_status
    assert (one.version, one.state, one.status.error_code) == (1, serving.ModelVersionStatus.AVAILABLE, 0)
    assert (two.version, two.state, two.status.error_code) == (2, serving.ModelVersionStatus.LOADING, 14)
    assert two.status.error_message == "no worker is ready yet"


def test_status_of_one_version_and_of_a_missing_one(fake, channel):
    fake.served["digits"] = [version("1.0"), version("2.0")]
    stub = serving_grpc.ModelServiceStub(channel)
    spec = serving.ModelSpec(name="digits")
    spec.version.value = 2
    (only,) = stub.GetModelStatus(serving.GetModelStatusRequest(model_spec=spec), timeout=10).model_version_status
    assert only.version == 2
    spec.version.value = 3
    error = refused(stub.GetModelStatus, serving.GetModelStatusRequest(model_spec=spec))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no version 3" in error.details()


# --- What we do not serve, health, reflection, shutdown -----------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "/tensorflow.serving.PredictionService/MultiInference",
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    ],
)
def test_tf_serving_methods_we_do_not_serve_are_unimplemented_saying_what_is(channel, method):
    call = channel.unary_unary(method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
    error = refused(call, b"")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "is not served by fastai-serving" in error.details()


def test_health_is_serving_while_every_model_has_a_ready_worker(fake, channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_while_a_model_has_no_ready_worker(fake, front, channel):
    fake.served["digits"] = [version("1.0", ready=False)]
    assert front.readiness.check() is False
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_of_an_unknown_service_is_not_found(channel):
    error = refused(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(service="nothing"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_tf_servings_services_the_open_inference_service_health_and_itself(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    assert {service.name for service in answer.list_services_response.service} == {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_reflection_describes_predict_with_tf_servings_message_names(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorflow.serving.PredictionService")
    (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    files = answer.file_descriptor_response.file_descriptor_proto
    assert any(b"tensorflow.serving.PredictRequest" in file for file in files)


def test_stopping_finishes_the_calls_in_flight_and_refuses_new_ones(fake):
    fake.hold_first = True
    running = serve(fake)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
        in_flight = predictions(opened).Predict.future(predict_request(), timeout=120)
        assert fake.entered.wait(timeout=60), "the call never reached the model"
        stopper = threading.Thread(target=running.stop, kwargs={"grace_s": 60})
        stopper.start()
        # New calls are refused as soon as the stop begins, while the held call is still in flight.
        during = refused_once_stopping(predictions(opened).Predict)
        assert not in_flight.done()
        probe = health_pb2_grpc.HealthStub(opened).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert probe.status == health_pb2.HealthCheckResponse.NOT_SERVING  # probes are still answered
        fake.release.set()
        assert in_flight.result(timeout=60).outputs["probabilities"].float_val[1] == 0.75
        stopper.join(timeout=60)
        after = refused(predictions(opened).Predict, predict_request())
    assert during.code() == grpc.StatusCode.UNAVAILABLE and "stopping" in during.details()  # a client retries it
    assert not stopper.is_alive()
    assert after.code() == grpc.StatusCode.UNAVAILABLE


def test_the_stop_refuses_new_calls_until_none_came_for_a_moment_before_it_stops_grpc():
    """grpc's own stop cancels a call it received but had not handed over yet: the gate goes on refusing (UNAVAILABLE,
    retried elsewhere) until the calls on open connections have stopped coming."""
    gate, quiet_s = StopGate(), 0.3
    gate.close()

    async def continuation(_details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    async def stop_with_a_late_call() -> tuple[float, float, grpc.RpcMethodHandler]:
        draining = asyncio.ensure_future(gate.drained(timeout_s=60, quiet_s=quiet_s))
        await asyncio.sleep(quiet_s / 2)
        late = await gate.intercept_service(continuation, CallDetails("/tensorflow.serving.PredictionService/Predict"))
        came = time.monotonic()
        left_s = await draining
        return time.monotonic() - came, left_s, late

    quiet_after_the_late_call_s, left_s, late = asyncio.run(stop_with_a_late_call())
    assert late.stream_unary is not None  # the late call got the refusal (UNAVAILABLE, "the server is stopping")
    assert quiet_after_the_late_call_s >= quiet_s and left_s > 0


@dataclass
class CallDetails:
    method: str
    invocation_metadata: tuple = ()


def refused_once_stopping(call, overall_s: float = 60) -> grpc.RpcError:
    """The first refusal of a new call, asked again until the front stops taking calls (within `overall_s`)."""
    give_up = time.monotonic() + overall_s
    while time.monotonic() < give_up:
        try:
            call(predict_request(), timeout=overall_s)
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"new calls were still answered {overall_s} s after the stop began")


# --- The one mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure, code",
    [
        (Failure.BAD_INPUT, "INVALID_ARGUMENT"),
        (Failure.NOT_FOUND, "NOT_FOUND"),
        (Failure.TOO_LARGE, "RESOURCE_EXHAUSTED"),
        (Failure.MODEL_FAILED, "INTERNAL"),
        (Failure.UNAVAILABLE, "UNAVAILABLE"),
        (Failure.TIMEOUT, "DEADLINE_EXCEEDED"),
        (Failure.OUTDATED_ARCHIVE, "FAILED_PRECONDITION"),
        (Failure.REFUSED, "FAILED_PRECONDITION"),
        (Failure.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (Failure.FORBIDDEN, "PERMISSION_DENIED"),
    ],
)
def test_each_failure_has_one_grpc_code(failure, code):
    assert GRPC_CODE[failure] == getattr(grpc.StatusCode, code)


def never_sends(release: threading.Event):
    """A request iterator that holds its call open without sending the message, until released."""
    release.wait(60)
    yield from ()


def test_a_call_whose_message_does_not_arrive_within_the_receive_deadline_is_deadline_exceeded(fake):
    running, release = serve(fake, grpc_receive_timeout_s=0.5, grpc_threads=1), threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            slow = opened.stream_unary("/tensorflow.serving.PredictionService/Predict")
            with pytest.raises(grpc.RpcError) as error:
                slow(never_sends(release), timeout=30)
    finally:
        release.set()
        running.stop(grace_s=0)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not arrive within 0.5 s" in error.value.details()
    assert not [call for call in fake.calls if call[0] == "predict"]  # the service never saw it


def test_calls_waiting_for_their_message_hold_no_thread_of_the_servicers(fake):
    running, release = serve(fake, grpc_threads=1), threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            slow = opened.stream_unary("/tensorflow.serving.PredictionService/Predict")
            waiting = [slow.future(never_sends(release), timeout=30) for _ in range(5)]
            answer = predictions(opened).Predict(predict_request(), timeout=30)
            for call in waiting:
                call.cancel()
    finally:
        release.set()
        running.stop(grace_s=0)
    assert answer.outputs["probabilities"].float_val


def test_calls_past_the_cap_are_refused_with_resource_exhausted(fake):
    running, release = serve(fake, grpc_max_concurrent_rpcs=2), threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            slow = opened.stream_unary("/tensorflow.serving.PredictionService/Predict")
            waiting = [slow.future(never_sends(release), timeout=30) for _ in range(2)]
            # Both hold their slots before any other call is sent (else a call could take a slot first).
            deadline = time.monotonic() + 30
            while running.gate.in_flight < 2:
                assert time.monotonic() < deadline and not any(call.done() for call in waiting), "not both held"
                time.sleep(0.01)
            while True:
                try:
                    predictions(opened).Predict(predict_request(), timeout=30)
                except grpc.RpcError as error:
                    refusal = error
                    break
                assert time.monotonic() < deadline, "never refused"
            for call in waiting:
                call.cancel()
    finally:
        release.set()
        running.stop(grace_s=0)
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
