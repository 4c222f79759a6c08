"""Request ids and the access log, in-process: each front over the real service and a stand-in TorchServe.

Every request gets an id (the client's X-Request-ID or `x-request-id` metadata when well formed, else a new
one), echoed on its answer, errors included, and sent on to the handler; every answer writes one JSON access
line on stdout. tests/test_observability.py checks the same through scripts/serve, into the handler's log.
"""

from __future__ import annotations

import json
import re

import grpc
import pytest
from fake_torchserve import FakeTorchServe

from fastai_serving.contract.errors import Failure, ServingError
from fastai_serving.contract.request_ids import request_id
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings

BODY = json.dumps({"instances": [{"b64": "aGk="}, {"b64": "aGk="}]}).encode()
NEW_ID = re.compile(r"[0-9a-f]{32}")
PNG = b"\x89PNG\r\n\x1a\n-pretend-image"


def rest(fake: FakeTorchServe, **settings):
    return create_app(Settings(**settings), upstream=fake).test_client()


def access_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"time"')]


# --- The id -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("presented", ["job-42.tile:7", "A" * 128, "0123456789abcdef"])
def test_a_well_formed_id_is_kept(presented):
    assert request_id(presented) == presented


@pytest.mark.parametrize("presented", [None, "", "A" * 129, "has space", 'quote"d', "new\nline", "ünïcode"])
def test_a_missing_or_malformed_id_is_replaced_by_a_new_one(presented):
    assert NEW_ID.fullmatch(request_id(presented))


# --- REST ---------------------------------------------------------------------------------------------


def test_a_clients_request_id_is_echoed_and_sent_on_to_the_handler():
    fake = FakeTorchServe()
    response = rest(fake).post("/v1/models/digits:predict", data=BODY, headers={"X-Request-ID": "job-42.tile:7"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "job-42.tile:7"
    assert fake.request_ids == ["job-42.tile:7"]


def test_a_request_without_a_well_formed_id_gets_a_new_one_of_its_own():
    fake = FakeTorchServe()
    shim = rest(fake)
    first = shim.post("/v1/models/digits:predict", data=BODY, headers={"X-Request-ID": "not an id"})
    second = shim.post("/v1/models/digits:predict", data=BODY)
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(NEW_ID.fullmatch(i) for i in ids) and ids[0] != ids[1] and fake.request_ids == ids


@pytest.mark.parametrize(
    "path, body, status",
    [("/v1/models/nope:predict", BODY, 404), ("/v1/models/digits:predict", b"{", 400), ("/no/such/route", b"", 404)],
)
def test_an_error_answer_echoes_the_request_id(path, body, status):
    fake = FakeTorchServe()
    response = rest(fake).post(path, data=body, headers={"X-Request-ID": "failing-1"})
    assert response.status_code == status and response.headers["X-Request-ID"] == "failing-1"


def test_a_handler_failure_echoes_the_request_id():
    fake = FakeTorchServe(failure=ServingError("instance 0 is not an image", Failure.BAD_INPUT))
    response = rest(fake).post("/v1/models/digits:predict", data=BODY, headers={"X-Request-ID": "bad-image"})
    assert response.status_code == 400 and response.headers["X-Request-ID"] == "bad-image"


def test_each_rest_answer_writes_one_access_line_with_its_id_model_instances_and_status(capsys):
    shim = rest(FakeTorchServe())
    shim.post("/v1/models/digits:predict", data=BODY, headers={"X-Request-ID": "logged-1"})
    shim.post("/v1/models/nope:predict", data=BODY, headers={"X-Request-ID": "logged-2"})
    lines = access_lines(capsys.readouterr().out)
    assert [line["request_id"] for line in lines] == ["logged-1", "logged-2"]
    answered, missing = lines
    assert answered["front"] == "rest" and answered["protocol"] == "tfserving"
    assert (answered["model"], answered["version"], answered["instances"], answered["status"]) == (
        "digits",
        "1",
        2,
        "200",
    )
    assert answered["seconds"] >= 0 and answered["route"] == "/v1/models/{model}:{verb}"
    assert missing["status"] == "404" and missing["instances"] is None and missing["queue_seconds"] is None


def test_a_failed_predictions_access_line_names_its_model_and_instances(capsys):
    fake = FakeTorchServe(failure=ServingError("instance 1 is not an image", Failure.BAD_INPUT))
    rest(fake).post("/v1/models/digits:predict", data=BODY, headers={"X-Request-ID": "failed-1"})
    (line,) = access_lines(capsys.readouterr().out)
    assert (line["model"], line["instances"], line["status"], line["version"]) == ("digits", 2, "400", "")


def test_the_access_log_switched_off_writes_nothing(capsys):
    response = rest(FakeTorchServe(), access_log=False).post("/v1/models/digits:predict", data=BODY)
    assert response.status_code == 200 and access_lines(capsys.readouterr().out) == []


# --- gRPC ---------------------------------------------------------------------------------------------


@pytest.fixture
def grpc_front():
    fake = FakeTorchServe()
    settings = Settings(host="127.0.0.1", grpc_port=0)
    front = GrpcFront(settings, Service(settings, fake)).start()
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        yield fake, serving_grpc.PredictionServiceStub(channel)
    front.stop(grace_s=0)


def predict_request(model: str = "digits") -> serving.PredictRequest:
    images = TensorProto(
        dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]), string_val=[PNG]
    )
    return serving.PredictRequest(model_spec=serving.ModelSpec(name=model), inputs={"image_bytes": images})


def test_a_grpc_clients_request_id_is_echoed_in_the_trailing_metadata_and_sent_on(grpc_front, capsys):
    fake, stub = grpc_front
    _, call = stub.Predict.with_call(predict_request(), metadata=(("x-request-id", "grpc-7"),), timeout=10)
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-7" and fake.request_ids == ["grpc-7"]
    (line,) = access_lines(capsys.readouterr().out)
    assert (line["request_id"], line["front"], line["status"], line["instances"]) == ("grpc-7", "grpc", "OK", 1)


def test_a_failed_grpc_call_echoes_its_request_id(grpc_front):
    _, stub = grpc_front
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(predict_request("nope"), metadata=(("x-request-id", "grpc-8"),), timeout=10)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert dict(refused.value.trailing_metadata())["x-request-id"] == "grpc-8"


def test_a_grpc_call_without_an_id_gets_a_new_one(grpc_front):
    fake, stub = grpc_front
    _, call = stub.Predict.with_call(predict_request(), timeout=10)
    assert NEW_ID.fullmatch(dict(call.trailing_metadata())["x-request-id"]) and fake.request_ids[0]
