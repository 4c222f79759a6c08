"""The REST front in-process: Flask's test client, the real service, and a typed stand-in for TorchServe (no
server, no Java).

The stand-in (tests/fake_torchserve.py) answers from a table of models and records every call, so these
tests show what a REST request asks of TorchServe and how each answer and failure is written.
tests/test_shim.py drives the same routes against a real TorchServe.
"""

from __future__ import annotations

import json

import pytest
from fake_torchserve import PREDICTIONS, FakeTorchServe, version
from prometheus_client.parser import text_string_to_metric_families

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import BadInput, Failure, NotFound, ServingError
from fastai_serving_shim.calls import Description, ModelStatus, VersionStatus
from fastai_serving_shim.protocols.tf_serving import metadata_body, status_body
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.rest.errors import REFUSED_METHOD_HEADER
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import Answer

BODY = json.dumps({"instances": [{"b64": "aGk="}]}).encode()


def shim_of(fake: FakeTorchServe, **settings):
    return create_app(Settings(**settings), upstream=fake).test_client()


def described(model: str, described: dict) -> Description:
    return Description(model, "1", ("1",), described)


# --- Predictions -----------------------------------------------------------------------------------


def test_a_prediction_is_forwarded_as_it_came_with_its_verb():
    fake = FakeTorchServe()
    response = shim_of(fake).post(
        "/v1/models/digits:predict", data=BODY, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200 and response.json == json.loads(PREDICTIONS)
    assert fake.inferred() == [("digits", None, BODY, "predict")]


def test_analyze_goes_to_the_only_model_served():
    fake = FakeTorchServe()
    assert shim_of(fake).post("/analyze:predict", data=BODY).status_code == 200
    assert fake.inferred()[-1][0] == "digits"


def test_analyze_with_several_models_and_no_default_says_how_to_choose_one():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "buildings": [version("1.0")]})
    response = shim_of(fake).post("/analyze:predict", data=BODY)
    assert response.status_code == 404
    assert "FASTAI_SERVING_DEFAULT_MODEL" in response.json["error"] and "--default-model" in response.json["error"]


def test_a_versioned_prediction_reaches_torchserves_version():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    assert shim_of(fake).post("/v1/models/digits/versions/2:predict", data=BODY).status_code == 200
    assert fake.inferred()[-1][:2] == ("digits", "2.0")


def test_versioned_predictions_ask_the_management_api_once_not_per_request():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    client = shim_of(fake)
    for _ in range(10):
        assert client.post("/v1/models/digits/versions/1:classify", data=b'{"examples": ["aGk="]}').status_code == 200
    assert fake.count("versions") == 1 and fake.count("infer") == 10


def test_analyze_without_a_configured_default_asks_for_the_models_once_not_per_request():
    fake = FakeTorchServe()
    client = shim_of(fake)
    for _ in range(10):
        assert client.post("/analyze:predict", data=BODY).status_code == 200
    assert fake.count("models") == 1


def test_a_version_registered_since_the_last_look_is_found_at_once():
    fake = FakeTorchServe(served={"digits": [version("1.0")]})
    client = shim_of(fake)
    assert client.post("/v1/models/digits/versions/1:predict", data=BODY).status_code == 200
    fake.served["digits"].append(version("2.0"))  # a reload registered it
    assert client.post("/v1/models/digits/versions/2:predict", data=BODY).status_code == 200
    assert fake.inferred()[-1][:2] == ("digits", "2.0")


def test_an_unknown_version_is_a_404_after_one_fresh_look():
    fake = FakeTorchServe()
    response = shim_of(fake).post("/v1/models/digits/versions/7:predict", data=BODY)
    assert response.status_code == 404 and response.json == {"error": "model 'digits' has no version 7"}
    assert fake.count("versions") == 2 and fake.count("infer") == 0


@pytest.mark.parametrize("path", ["/v1/models/..:predict", "/v1/models/.:predict", "/v1/models/%2E%2E:predict"])
def test_a_model_name_that_could_climb_out_of_its_url_is_not_found(path):
    fake = FakeTorchServe()
    response = shim_of(fake).post(path, data=BODY)
    assert response.status_code == 404 and "model names are letters" in response.json["error"]
    assert fake.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b'{"instances": []}',
        b'{"instances": [], "inputs": []}',
        b'{"instances": ["aGk="], "examples": ["aGk="]}',
        b'{"instances": ["aGk="], "signature_name": 3}',
        b'{"inputs": {"colour": ["red", "blue"], "size": [1.5]}}',
        b'{"instances": [{"colour": "red", "size": NaN}]}',
        b'{"text": "one", "row": {"colour": "red"}}',
    ],
)
def test_a_malformed_body_is_refused_with_the_contracts_message_before_it_goes_upstream(body):
    fake = FakeTorchServe()
    response = shim_of(fake).post("/v1/models/digits:predict", data=body)
    with pytest.raises(BadInput) as refused:
        read_body(body, raw_allowed=False)
    assert response.status_code == 400 and response.json == {"error": refused.value.message}
    assert fake.count("infer") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [{"colour": "red", "size": None}, {"colour": "blue", "size": 1.5}]},
        {"inputs": {"colour": ["red", "blue"], "size": [None, 1.5]}},
        {"row": {"colour": "red", "size": 1.5}},
        {"instances": ["a text", {"text": "another"}]},
        {"text": "one text"},
    ],
)
def test_tabular_and_text_bodies_go_upstream_as_they_came(body):
    fake = FakeTorchServe()
    data = json.dumps(body).encode()
    fake.described = {"task": "regression", "kind": "tabular"}
    assert shim_of(fake).post("/v1/models/digits:predict", data=data).status_code == 200
    assert fake.inferred() == [("digits", None, data, "predict")]


def test_classify_without_examples_is_refused_before_it_goes_upstream():
    fake = FakeTorchServe()
    response = shim_of(fake).post("/v1/models/digits:classify", data=BODY)
    assert response.status_code == 400 and "examples" in response.json["error"] and fake.count("infer") == 0


def test_a_body_over_the_limit_is_a_413_before_it_is_read():
    fake = FakeTorchServe()
    response = shim_of(fake, max_body_bytes=100).post("/analyze:predict", data=b"{" + b" " * 200 + b"}")
    assert response.status_code == 413 and response.json == {"error": "request body over the limit of 100 bytes"}
    assert fake.count("infer") == 0


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("GET", "/v1/models/digits:predict", 405, ":predict takes POST"),
        ("POST", "/v1/models/digits", 405, "POST goes to"),
        ("PUT", "/analyze:predict", 405, "PUT is not allowed on /analyze:predict: it takes POST"),
        ("POST", "/v1/models/digits:explain", 404, "unknown method :explain"),
        ("POST", "/v1/models/digits/labels/stable:predict", 404, "version label 'stable'"),
        ("GET", "/v1/models/digits/versions/latest", 400, "'latest' is not a number"),
        ("GET", "/v3/models/digits", 404, "no such route"),
        ("GET", "/models", 404, "no such route"),
    ],
)
def test_wrong_routes_and_methods_get_json_errors(method, path, status, message):
    response = shim_of(FakeTorchServe()).open(path, method=method, data=BODY)
    assert response.status_code == status and message in response.json["error"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/v1/models/digits:predict", "POST, OPTIONS"),
        ("DELETE", "/v1/models/digits/versions/1:classify", "POST, OPTIONS"),
        ("POST", "/v1/models/digits/metadata", "GET, HEAD, OPTIONS"),
        ("PUT", "/analyze:predict", "POST, OPTIONS"),
        ("POST", "/ready", "GET, HEAD, OPTIONS"),
        ("GET", "/v2/models/digits/infer", "POST, OPTIONS"),
        ("PATCH", "/v2/health/live", "GET, HEAD, OPTIONS"),
    ],
)
def test_every_405_names_the_methods_its_route_takes_in_allow(method, path, allowed):
    response = shim_of(FakeTorchServe()).open(path, method=method, data=BODY)
    assert response.status_code == 405 and response.headers["Allow"] == allowed
    assert set(response.json) == {"error"}


def test_a_method_the_proxy_refused_itself_is_answered_by_the_shim_with_allow_and_json():
    """nginx answers TRACE 405 without Allow: it asks the shim as OPTIONS, naming the method (scripts/nginx.conf)."""
    fake = FakeTorchServe()
    response = shim_of(fake).options("/v1/models/digits:predict", headers={REFUSED_METHOD_HEADER: "TRACE"})
    assert response.status_code == 405 and response.headers["Allow"] == "POST, OPTIONS"
    assert response.json == {"error": "TRACE is not allowed on /v1/models/digits:predict: it takes POST, OPTIONS"}
    assert fake.calls == []


def test_an_options_request_of_a_client_is_answered_with_allow():
    response = shim_of(FakeTorchServe()).options("/analyze:predict")
    assert response.status_code == 200 and "POST" in response.headers["Allow"]


# --- Failures, as HTTP answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure, status",
    [
        (ServingError("instance 0 is not valid base64", Failure.BAD_INPUT), 400),
        (ServingError("the model failed on this request's input (ValueError)", Failure.MODEL_FAILED), 500),
        (NotFound("model 'digits' not found"), 404),
        (ServingError("request body over TorchServe's size limit", Failure.TOO_LARGE), 413),
        (ServingError("model 'digits' did not answer in time", Failure.TIMEOUT), 504),
        (ServingError("TorchServe refused the request to model 'digits': slow down", Failure.REFUSED), 400),
        (ServingError("the worker serving 'digits' died and was not back in time; retry", Failure.UNAVAILABLE), 503),
        (ServingError("an older handler", Failure.OUTDATED_ARCHIVE), 412),
    ],
)
def test_every_kind_of_failure_is_one_http_status_and_its_message(failure, status):
    response = shim_of(FakeTorchServe(failure=failure)).post("/v1/models/digits:predict", data=BODY)
    assert response.status_code == status and response.json == {"error": failure.message}


def test_the_answer_of_a_handler_older_than_the_front_still_passes_through_on_rest():
    """Its archive cannot answer the gRPC and v2 fronts (they refuse it, asking for a rebuild): REST's JSON it can."""
    fake = FakeTorchServe(answer=Answer(PREDICTIONS, version=""))
    response = shim_of(fake).post("/v1/models/digits:predict", data=BODY)
    assert response.status_code == 200 and response.get_data() == PREDICTIONS


# --- Status, readiness, metadata -------------------------------------------------------------------------


def test_status_of_a_model_with_a_ready_worker_is_available():
    assert status_body(ModelStatus("digits", (VersionStatus("1", True),))) == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ],
            "name": "digits",
            "ready": True,
        },
    )


def test_status_of_a_model_without_a_ready_worker_is_503_loading():
    status, body = status_body(ModelStatus("digits", (VersionStatus("1", False),)))
    assert status == 503 and body["ready"] is False and body["model_version_status"][0]["state"] == "LOADING"


def test_status_route_of_one_version():
    fake = FakeTorchServe(served={"digits": [version("1.0", ready=False), version("2.0")]})
    client = shim_of(fake)
    assert client.get("/v1/models/digits/versions/2").status_code == 200
    assert client.get("/v1/models/digits/versions/1").status_code == 503
    assert client.get("/v1/models/digits").status_code == 200  # one version can serve


def test_urls_name_versions_as_tf_serving_does():
    fake = FakeTorchServe(served={"m": [version("1.0"), version("2.0"), version("10")]})
    client = shim_of(fake)
    for number, served_as in (("1", "1.0"), ("02", "2.0"), ("10", "10")):
        assert client.post(f"/v1/models/m/versions/{number}:predict", data=BODY).status_code == 200
        assert fake.inferred()[-1][1] == served_as
    response = client.post("/v1/models/m/versions/3:predict", data=BODY)
    assert response.status_code == 404 and response.json == {"error": "model 'm' has no version 3"}


def test_ready_is_200_for_several_models_with_no_default():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "buildings": [version("1.0")]})
    response = shim_of(fake).get("/ready")
    assert response.status_code == 200 and response.json == {
        "ready": True,
        "models": {"digits": True, "buildings": True},
    }


def test_ready_is_503_while_any_model_has_no_ready_worker():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "buildings": [version("1.0", ready=False)]})
    response = shim_of(fake).get("/ready")
    assert response.status_code == 503 and response.json["models"] == {"digits": True, "buildings": False}


def test_ready_waits_for_the_named_models_only_and_counts_a_missing_one_as_not_ready():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "buildings": [version("1.0", ready=False)]})
    assert shim_of(fake, ready_models="digits").get("/ready").status_code == 200
    response = shim_of(fake, ready_models="digits, roads").get("/ready")
    assert response.status_code == 503 and response.json["models"] == {"digits": True, "roads": False}


def test_ready_waits_for_the_stores_archives_and_every_registered_model_so_one_that_cannot_load_shows():
    """A folder in the store TorchServe took for a model (its worker dying at each start) fails readiness, by name."""
    fake = FakeTorchServe(served={"digits": [version("1.0")], "retired": [version("1.0", ready=False)]})
    response = shim_of(fake, store_models="digits, roads").get("/ready")
    assert response.status_code == 503
    assert response.json == {"ready": False, "models": {"digits": True, "roads": False, "retired": False}}


def test_ready_with_no_model_at_all_is_503():
    response = shim_of(FakeTorchServe(served={})).get("/ready")
    assert response.status_code == 503 and response.json == {"ready": False, "models": {}}


def test_metadata_of_a_classifier_names_its_classes_and_both_signatures():
    body = metadata_body(described("digits", {"task": "classification", "classes": ["cat", "dog"], "input": "image"}))
    assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "classes"}
    assert signatures["serving_default"]["outputs"]["probabilities"]["tensor_shape"]["dim"][1] == {"size": "2"}
    assert signatures["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def test_metadata_of_a_regressor_has_outputs_and_no_classes_signature():
    signatures = metadata_body(described("r", {"task": "regression", "classes": [], "input": "image"}))["metadata"][
        "signature_def"
    ]
    assert set(signatures["signature_def"]) == {"serving_default"}
    assert "outputs" in signatures["signature_def"]["serving_default"]["outputs"]


def test_metadata_of_a_segmenter_says_its_output_is_a_class_index_mask():
    body = metadata_body(described("s", {"task": "segmentation", "classes": ["background", "road"], "input": "image"}))
    outputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    assert outputs == {
        "mask": {"dtype": "DT_INT64", "tensor_shape": {"dim": [{"size": "-1"}] * 3}, "name": "outputs:0"}
    }


def test_metadata_of_a_tabular_model_gives_each_column_its_tensor_type():
    tabular = {
        "task": "regression", "classes": [], "input": "row", "kind": "tabular", "targets": ["price", "volume"],
        "inputs": [
            {"name": "colour", "kind": "categorical", "type": "string", "categories": ["red"], "nullable": True},
            {"name": "grade", "kind": "categorical", "type": "integer", "categories": [1, 2], "nullable": True},
            {"name": "size", "kind": "continuous", "type": "number", "nullable": False},
        ],
    }  # fmt: skip
    body = metadata_body(Description("prices", "1", ("1",), tabular))
    serving = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {name: tensor["dtype"] for name, tensor in serving["inputs"].items()} == {
        "colour": "DT_STRING", "grade": "DT_INT64", "size": "DT_FLOAT",
    }  # fmt: skip
    assert serving["outputs"]["outputs"]["tensor_shape"]["dim"][1] == {"size": "2"}
    assert body["metadata"]["fastai"] == tabular


def test_metadata_of_a_text_model_has_one_string_input():
    text = {"task": "classification", "classes": ["neg", "pos"], "input": "text", "kind": "text",
            "inputs": [{"name": "text", "kind": "text", "max_chars": 10000}]}  # fmt: skip
    inputs = metadata_body(described("reviews", text))["metadata"]["signature_def"]["signature_def"]["classes"][
        "inputs"
    ]
    assert inputs == {"text": {"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1"}]}, "name": "text:0"}}


def test_metadata_is_asked_of_the_handler_once_a_minute_not_per_request():
    fake = FakeTorchServe()
    client = shim_of(fake)
    for _ in range(5):
        assert client.get("/v1/models/digits/metadata").json["metadata"]["fastai"]["classes"] == ["cat", "dog"]
    assert fake.count("describe") == 1


def test_the_openapi_document_is_served():
    response = shim_of(FakeTorchServe()).get("/openapi.yaml")
    assert response.status_code == 200 and response.data.startswith(b"openapi: 3.0")


# --- Settings ------------------------------------------------------------------------------------------


def test_settings_come_from_fastai_serving_variables():
    settings = Settings.from_env(
        {"FASTAI_SERVING_PORT": "9000", "FASTAI_SERVING_PREDICT_TIMEOUT_S": "2.5", "FASTAI_SERVING_RETRY_S": "3"}
    )
    assert (settings.port, settings.predict_timeout_s, settings.retry_s) == (9000, 2.5, 3.0)
    assert Settings.from_env({"FASTAI_SERVING_PORT": ""}).port == Settings().port


def test_a_setting_that_is_not_a_number_is_refused_with_its_variable():
    with pytest.raises(ValueError, match="FASTAI_SERVING_WORKERS='two' is not a valid int"):
        Settings.from_env({"FASTAI_SERVING_WORKERS": "two"})


# --- Liveness, the model list, draining, metrics -----------------------------------------------------


def test_alive_answers_without_asking_torchserve():
    fake = FakeTorchServe()
    response = shim_of(fake).get("/")
    assert response.status_code == 200 and response.json == {"status": "alive"} and fake.calls == []


def test_the_model_list_is_kserves_v1_shape():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "buildings": [version("1.0")]})
    assert shim_of(fake).get("/v1/models").json == {"models": ["digits", "buildings"]}


def test_while_draining_readiness_fails_at_once_and_predictions_are_still_answered(tmp_path):
    fake, drain_file = FakeTorchServe(), tmp_path / "draining"
    client = shim_of(fake, drain_file=str(drain_file))
    assert client.get("/ready").status_code == 200
    drain_file.touch()  # what scripts/serve does on SIGTERM
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json == {"ready": False, "draining": True, "models": {}}
    answer = client.post("/v1/models/digits:predict", data=BODY)
    assert answer.status_code == 200 and answer.headers["Connection"] == "close"
    assert client.get("/").status_code == 200  # alive all the while


def metric_value(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    return next((sample.value for sample in samples if sample.name == name and sample.labels == labels), 0.0)


def test_metrics_count_requests_by_model_route_verb_and_status():
    client = shim_of(FakeTorchServe(), torchserve_metrics="http://127.0.0.1:9/metrics")
    name = "fastai_serving_requests_total"
    labels = {"front": "rest", "protocol": "tfserving", "model": "digits", "route": "/v1/models/{model}:{verb}"}
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.post("/v1/models/digits:predict", data=BODY)
    client.post("/v1/models/digits:predict", data=b"{}")
    after = client.get("/metrics").get_data(as_text=True)
    ok, bad = {**labels, "verb": "predict", "status": "200"}, {**labels, "verb": "predict", "status": "400"}
    assert metric_value(after, name, **ok) - metric_value(before, name, **ok) == 3
    assert metric_value(after, name, **bad) - metric_value(before, name, **bad) == 1


def test_metrics_count_instances_per_request_and_never_label_unknown_models():
    client = shim_of(FakeTorchServe(), torchserve_metrics="http://127.0.0.1:9/metrics")
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/v1/models/digits:predict", data=json.dumps({"instances": ["aGk="] * 5}))
    client.post("/v1/models/nobody_serves_this:predict", data=BODY)
    after = client.get("/metrics").get_data(as_text=True)
    count = "fastai_serving_instances_per_request_count"
    assert (
        metric_value(after, count, model="digits", verb="predict")
        - metric_value(before, count, model="digits", verb="predict")
        == 1
    )
    total = "fastai_serving_instances_per_request_sum"
    assert (
        metric_value(after, total, model="digits", verb="predict")
        - metric_value(before, total, model="digits", verb="predict")
        == 5
    )
    assert "nobody_serves_this" not in after


@pytest.mark.parametrize(
    "body, status",
    [(b"{}", 400), (b"x" * 2048, 413)],
)
def test_a_made_up_model_name_never_becomes_a_label_whatever_the_answer(body, status):
    client = shim_of(FakeTorchServe(), torchserve_metrics="http://127.0.0.1:9/metrics", max_body_bytes=1024)
    assert client.post("/v1/models/made_up_xyz:predict", data=body).status_code == status
    assert "made_up_xyz" not in client.get("/metrics").get_data(as_text=True)


class Unreachable(FakeTorchServe):
    """TorchServe down: every call fails to connect, whatever the model's name."""

    def _versions(self, model: str) -> list:
        raise ServingError("TorchServe is unreachable; retry later", Failure.UNAVAILABLE)


def test_a_made_up_model_name_never_becomes_a_label_when_torchserve_is_down():
    client = shim_of(Unreachable(), torchserve_metrics="http://127.0.0.1:9/metrics")
    assert client.post("/v1/models/made_up_xyz:predict", data=BODY).status_code == 503
    assert "made_up_xyz" not in client.get("/metrics").get_data(as_text=True)


def test_metrics_say_when_torchserves_own_could_not_be_read():
    text = (
        shim_of(FakeTorchServe(), torchserve_metrics="http://127.0.0.1:9/metrics")
        .get("/metrics")
        .get_data(as_text=True)
    )
    assert metric_value(text, "fastai_serving_torchserve_metrics_up") == 0
    assert "# TYPE fastai_serving_requests_in_flight gauge" in text
