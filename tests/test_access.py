"""Who may call, in-process: the key file (shim/access.py), the REST front's check (Flask's test client) and the
gRPC front's (a real grpc.aio server on loopback), each with a typed stand-in for TorchServe. End to end, with
real TLS and the real clients: tests/test_security.py."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from fake_torchserve import FakeTorchServe
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from fastai_serving.contract.errors import Failure, ServingError
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_shim.access import Access, ApiKeys, KeyFileError, Route, bearer_key, parse_keys
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.watched import Watched

KEY_A = "a" * 8 + "0123456789abcdef"
KEY_B = "b" * 8 + "0123456789abcdef"
BODY = json.dumps({"instances": [{"b64": "aGk="}]}).encode()


class Clock:
    """A clock the test moves: the key file is looked at again once a check interval has passed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text(f"# who may call\npipeline-a: {KEY_A}\n\nops: {KEY_B}\n")
    return path


def refused_count(front: str, reason: str) -> float:
    return REGISTRY.get_sample_value("fastai_serving_refused_calls_total", {"front": front, "reason": reason}) or 0.0


# --- The key file -------------------------------------------------------------------------------------


def test_a_key_file_holds_named_keys_one_a_line_with_comments_and_blank_lines():
    keys = parse_keys(f"# comment\n\npipeline-a: {KEY_A}\n  ops :  {KEY_B}  \n")
    assert sorted(keys.values()) == ["ops", "pipeline-a"]


@pytest.mark.parametrize(
    "text, message",
    [
        (f"{KEY_A}\n", "line 1 is not `name: key`"),
        ("short: abc\n", "line 1 (short): a key is at least 16 characters"),
        (f"a: {KEY_A}\nb: {KEY_A}\n", "line 2 (b): a name or key given twice"),
        (f"a: {KEY_A}\na: {KEY_B}\n", "line 2 (a): a name or key given twice"),
        ("# none\n", "it holds no key"),
    ],
)
def test_a_key_file_that_cannot_be_used_is_refused_naming_the_line_never_the_key(text, message):
    with pytest.raises(KeyFileError) as refused:
        parse_keys(text)
    assert message in str(refused.value) and KEY_A not in str(refused.value) and "abc" not in str(refused.value)


def test_a_key_is_known_by_its_name_and_a_wrong_one_by_none(key_file):
    keys = ApiKeys(str(key_file))
    assert keys.name_of(KEY_A) == "pipeline-a" and keys.name_of(KEY_B) == "ops"
    assert keys.name_of(KEY_A + "x") is None and keys.name_of(KEY_A[:-1]) is None


def test_an_edited_key_file_is_read_again_once_the_check_interval_passed(key_file):
    clock = Clock()
    keys = ApiKeys(str(key_file), Watched([str(key_file)], check_s=1.0, clock=clock))
    replacement = key_file.with_name("new")
    replacement.write_text(f"ops: {KEY_B}\n")
    replacement.rename(key_file)  # revoke pipeline-a
    assert keys.name_of(KEY_A) == "pipeline-a"  # not looked at again within the interval
    clock.now = 1.0
    assert keys.name_of(KEY_A) is None and keys.name_of(KEY_B) == "ops"


def test_a_key_file_that_breaks_keeps_the_keys_read_before_and_the_log_names_neither_key_nor_path(key_file, caplog):
    keys = ApiKeys(str(key_file))
    key_file.write_text(f"pipeline-a {KEY_A}\n")
    with caplog.at_level(logging.INFO, logger="fastai_serving.access"):
        assert keys.reload() is False
    assert keys.name_of(KEY_A) == "pipeline-a"
    assert "line 1 is not `name: key`" in caplog.text
    assert KEY_A not in caplog.text and str(key_file) not in caplog.text


def test_a_reread_says_which_names_were_added_and_revoked(key_file, caplog):
    keys = ApiKeys(str(key_file))
    key_file.write_text(f"ops: {KEY_B}\nbatch: {'c' * 20}\n")
    with caplog.at_level(logging.INFO, logger="fastai_serving.access"):
        assert keys.reload() is True
    assert "added batch" in caplog.text and "revoked pipeline-a" in caplog.text and KEY_B not in caplog.text


def test_an_unreadable_key_file_fails_the_start_naming_the_setting_not_the_path(tmp_path):
    with pytest.raises(KeyFileError) as refused:
        ApiKeys(str(tmp_path / "missing"))
    assert "FASTAI_SERVING_API_KEYS_FILE" in str(refused.value) and str(tmp_path) not in str(refused.value)


@pytest.mark.parametrize(
    "header, key",
    [
        (f"Bearer {KEY_A}", KEY_A),
        (f"bearer  {KEY_A} ", KEY_A),
        (f"Basic {KEY_A}", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_the_key_is_read_from_a_bearer_authorization_only(header, key):
    assert bearer_key(header) == key


def test_health_is_open_by_default_and_keyed_when_asked(key_file):
    open_health = Access(Settings(api_keys_file=str(key_file)))
    assert open_health.check("rest", Route.HEALTH, None, "", lambda: False) == ""
    keyed = Access(Settings(api_keys_file=str(key_file), keyed_health=True))
    with pytest.raises(ServingError) as refused:
        keyed.check("rest", Route.HEALTH, None, "", lambda: False)
    assert refused.value.failure is Failure.UNAUTHENTICATED


def test_the_settings_refuse_half_a_tls_pair_and_an_unknown_metrics_choice():
    with pytest.raises(ValueError, match="FASTAI_SERVING_TLS_KEY_FILE"):
        Settings(tls_cert_file="server.pem")
    with pytest.raises(ValueError, match="open, keyed, loopback"):
        Settings(metrics_access="private")
    with pytest.raises(ValueError, match="needs TLS"):
        Settings(tls_client_ca_file="ca.pem")


# --- The REST front -------------------------------------------------------------------------------------


def rest(fake: FakeTorchServe, **settings):
    return create_app(Settings(**settings), upstream=fake).test_client()


def test_keys_off_by_default_every_route_answers_without_one():
    fake = FakeTorchServe()
    assert rest(fake).post("/v1/models/digits:predict", data=BODY).status_code == 200


def test_a_missing_key_is_401_with_a_bearer_challenge_before_the_body_is_read(key_file):
    fake = FakeTorchServe()
    before = refused_count("rest", "missing_key")
    response = rest(fake, api_keys_file=str(key_file)).post("/v1/models/digits:predict", data=b"{not json")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "needs an API key" in response.json["error"] and "Authorization: Bearer" in response.json["error"]
    assert fake.calls == []  # neither a body error (400) nor an upstream call
    assert refused_count("rest", "missing_key") == before + 1


def test_a_wrong_key_is_401_and_counted_as_wrong(key_file):
    before = refused_count("rest", "wrong_key")
    response = rest(FakeTorchServe(), api_keys_file=str(key_file)).post(
        "/v1/models/digits:predict", data=BODY, headers={"Authorization": f"Bearer {KEY_A}x"}
    )
    assert response.status_code == 401 and "mistyped, or revoked" in response.json["error"]
    assert refused_count("rest", "wrong_key") == before + 1


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_a_right_key_in_either_header_is_answered_and_counted_under_its_name(key_file, header):
    value = f"Bearer {KEY_A}" if header == "Authorization" else KEY_A
    labels = {"front": "rest", "key": "pipeline-a"}
    before = REGISTRY.get_sample_value("fastai_serving_calls_by_key_total", labels) or 0.0
    response = rest(FakeTorchServe(), api_keys_file=str(key_file)).post(
        "/v1/models/digits:predict", data=BODY, headers={header: value}
    )
    assert response.status_code == 200
    assert REGISTRY.get_sample_value("fastai_serving_calls_by_key_total", labels) == before + 1


@pytest.mark.parametrize("path", ["/v1/models/digits", "/v1/models/digits/metadata", "/v2/models/digits", "/v2",
                                  "/v1/models", "/analyze", "/no/such/route"])  # fmt: skip
def test_every_model_route_and_unknown_path_needs_the_key(key_file, path):
    assert rest(FakeTorchServe(), api_keys_file=str(key_file)).get(path).status_code == 401


@pytest.mark.parametrize("path", ["/", "/ready", "/v2/health/live", "/v2/health/ready", "/openapi.yaml", "/metrics"])
def test_health_the_api_document_and_metrics_stay_open_by_default(key_file, path):
    assert rest(FakeTorchServe(), api_keys_file=str(key_file)).get(path).status_code in (200, 503)


def test_keyed_health_and_keyed_metrics_take_a_key(key_file):
    client = rest(FakeTorchServe(), api_keys_file=str(key_file), keyed_health=True, metrics_access="keyed")
    assert client.get("/ready").status_code == 401 and client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": KEY_B}).status_code == 200


def test_loopback_metrics_answer_this_machine_and_refuse_another_with_403():
    client = rest(FakeTorchServe(), metrics_access="loopback")
    assert client.get("/metrics").status_code == 200  # Flask's test client comes from 127.0.0.1
    # Behind nginx the shim's peer is a unix socket: nginx's header says where the client was.
    for unix_peer in ("", "/run/fastai-serving/health.sock"):
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": unix_peer},
                          headers={"X-Fastai-Serving-Peer": "127.0.0.1"}).status_code == 200  # fmt: skip
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": ""},
                      headers={"X-Fastai-Serving-Peer": "10.1.2.3"}).status_code == 403  # fmt: skip
    far = client.get(
        "/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}, headers={"X-Fastai-Serving-Peer": "127.0.0.1"}
    )
    assert far.status_code == 403 and "only on this machine" in far.json["error"]


def test_refusals_are_counted_by_reason_and_no_label_holds_a_key_or_a_made_up_model(key_file):
    client = rest(FakeTorchServe(), api_keys_file=str(key_file))
    client.post(
        "/v1/models/made-up-model:predict", data=BODY, headers={"Authorization": "Bearer not-a-real-key-at-all"}
    )
    text = generate_latest(REGISTRY).decode()
    assert 'fastai_serving_refused_calls_total{front="rest",reason="wrong_key"}' in text
    assert "made-up-model" not in text and "not-a-real-key" not in text and KEY_A not in text


# --- The gRPC front -------------------------------------------------------------------------------------


@pytest.fixture
def keyed_front(key_file):
    settings = Settings(host="127.0.0.1", grpc_port=0, api_keys_file=str(key_file))
    fake = FakeTorchServe()
    front = GrpcFront(settings, Service(settings, fake)).start()
    yield front, fake
    front.stop(grace_s=0)


def predict_request() -> serving.PredictRequest:
    images = TensorProto(dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
                         string_val=[b"png"])  # fmt: skip
    return serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"), inputs={"image_bytes": images})


def test_grpc_without_a_key_is_unauthenticated_and_never_reaches_torchserve(keyed_front):
    front, fake = keyed_front
    before = refused_count("grpc", "missing_key")
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            serving_grpc.PredictionServiceStub(channel).Predict(predict_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <key>" in refused.value.details()
    assert fake.count("infer") == 0 and refused_count("grpc", "missing_key") == before + 1
    labels = {"front": "grpc", "protocol": "tfserving", "model": "", "route": "PredictionService/Predict",
              "verb": "", "status": "UNAUTHENTICATED"}  # fmt: skip
    assert REGISTRY.get_sample_value("fastai_serving_requests_total", labels) >= 1


def test_grpc_with_the_key_in_its_authorization_metadata_is_answered(keyed_front):
    front, fake = keyed_front
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        stub = serving_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(predict_request(), timeout=10, metadata=[("authorization", f"Bearer {KEY_B}x")])
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in refused.value.details()
        response = stub.Predict(predict_request(), timeout=10, metadata=[("authorization", f"Bearer {KEY_B}")])
    assert response.outputs["probabilities"].float_val and fake.count("infer") == 1


def test_grpc_health_and_reflection_stay_open(keyed_front):
    front, _ = keyed_front
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        assert any("PredictionService" in s.name for s in next(listing).list_services_response.service)
