"""The TF-Serving shim in front of a real TorchServe: every route, body form and error code.

Each response is also checked against the OpenAPI document (shim/rest/openapi.yaml).
"""

from __future__ import annotations

import base64
import io
import json

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.load import concurrently
from harness.servers import start_shim
from openapi_contract import assert_matches_spec

pytestmark = pytest.mark.e2e


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digit_png(demo_model, digit: int) -> bytes:
    return (demo_model / "samples" / f"{digit}.png").read_bytes()


def checked(response: requests.Response, path: str, method: str = "POST") -> requests.Response:
    assert_matches_spec(response, path, method)
    return response


PREDICT = "/v1/models/{model}:predict"


# --- chip-n-scale and the original fastai-serving -------------------------------------------------


def test_chip_n_scale_request_gets_ten_probability_lists_in_order(torchserve, demo_model):
    # Exactly what chip-n-scale's download-and-predict lambda sends: no headers at all.
    payload = {"instances": [{"image_bytes": {"b64": b64(digit_png(demo_model, d))}} for d in range(10)]}
    response = checked(
        requests.post(f"{torchserve.shim}/analyze:predict", data=json.dumps(payload), timeout=60), "/analyze:predict"
    )
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 10
    for probabilities in predictions:
        assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert sum(int(np.argmax(p)) == d for d, p in enumerate(predictions)) >= 9


def test_form_urlencoded_content_type_is_read_as_json(torchserve, demo_model):
    # chip-n-scale's older JS client labels its JSON body as a form.
    payload = {"instances": [{"image_bytes": {"b64": b64(digit_png(demo_model, 6))}}]}
    response = requests.post(
        f"{torchserve.shim}/analyze:predict",
        data=json.dumps(payload),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 200 and int(np.argmax(response.json()["predictions"][0])) == 6


def test_classes_signature_answers_indices_like_the_original_server(torchserve, demo_model):
    payload = {"signature_name": "classes", "instances": [{"image_bytes": {"b64": b64(digit_png(demo_model, 1))}}]}
    response = checked(
        requests.post(f"{torchserve.shim}/analyze:predict", data=json.dumps(payload), timeout=60), "/analyze:predict"
    )
    assert response.json() == {"predictions": [1]}


def test_one_image_shortcut_answers_the_label(torchserve, demo_model):
    response = requests.post(
        f"{torchserve.shim}/analyze:predict", json={"image_bytes": b64(digit_png(demo_model, 9))}, timeout=60
    )
    checked(response, "/analyze:predict")
    assert response.json()["prediction"] == "9" and len(response.json()["probabilities"]) == 10


# --- TF Serving's documented request forms --------------------------------------------------------


def test_row_form_with_unnamed_b64_instances(torchserve, demo_model):
    body = {"instances": [{"b64": b64(digit_png(demo_model, 2))}, {"b64": b64(digit_png(demo_model, 3))}]}
    response = checked(requests.post(f"{torchserve.shim}/v1/models/digits:predict", json=body, timeout=60), PREDICT)
    assert [int(np.argmax(p)) for p in response.json()["predictions"]] == [2, 3]


def test_columnar_form_answers_outputs(torchserve, demo_model):
    body = {"signature_name": "serving_default", "inputs": {"image_bytes": [{"b64": b64(digit_png(demo_model, 4))}]}}
    response = checked(requests.post(f"{torchserve.shim}/v1/models/digits:predict", json=body, timeout=60), PREDICT)
    assert int(np.argmax(response.json()["outputs"][0])) == 4


def test_a_version_in_the_url_reaches_that_version(torchserve, demo_model):
    body = {"instances": [{"b64": b64(digit_png(demo_model, 5))}]}
    url = f"{torchserve.shim}/v1/models/digits/versions/1:predict"
    response = checked(requests.post(url, json=body, timeout=60), "/v1/models/{model}/versions/{version}:predict")
    assert int(np.argmax(response.json()["predictions"][0])) == 5


def test_classify_answers_labels_and_scores(torchserve, demo_model):
    body = {"signature_name": "", "examples": [{"image_bytes": {"b64": b64(digit_png(demo_model, 7))}}]}
    response = checked(
        requests.post(f"{torchserve.shim}/v1/models/digits:classify", json=body, timeout=60),
        "/v1/models/{model}:classify",
    )
    (result,) = response.json()["results"]
    assert [label for label, _ in result] == [str(d) for d in range(10)]
    assert max(result, key=lambda pair: pair[1])[0] == "7"


def test_regress_answers_one_value_per_example(torchserve, exported_learners):
    image = sorted((exported_learners["regressor"].parent / "images").glob("*.png"))[0].read_bytes()
    body = {"examples": [{"b64": b64(image)}, {"b64": b64(image)}]}
    response = checked(
        requests.post(f"{torchserve.shim}/v1/models/regressor:regress", json=body, timeout=60),
        "/v1/models/{model}:regress",
    )
    values = response.json()["results"]
    assert len(values) == 2 and isinstance(values[0], float) and values[0] == pytest.approx(values[1], abs=1e-5)


def test_segmentation_answers_a_class_index_mask(torchserve, exported_learners):
    image = sorted((exported_learners["segmenter"].parent / "images").glob("*.png"))[0].read_bytes()
    response = requests.post(
        f"{torchserve.shim}/v1/models/segmenter:predict", json={"instances": [{"b64": b64(image)}]}, timeout=60
    )
    checked(response, PREDICT)
    mask = np.array(response.json()["predictions"][0])
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}


# --- Status and metadata ----------------------------------------------------------------------------


def test_status_of_a_ready_model_is_available(torchserve):
    for url, path in [
        (f"{torchserve.shim}/analyze", "/analyze"),
        (f"{torchserve.shim}/v1/models/digits", "/v1/models/{model}"),
        (f"{torchserve.shim}/v1/models/digits/versions/1", "/v1/models/{model}/versions/{version}"),
    ]:
        response = checked(requests.get(url, timeout=5), path, "GET")
        assert response.status_code == 200
        assert response.json() == {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ],
            "name": "digits",
            "ready": True,
        }


def test_metadata_tells_task_classes_and_input(torchserve):
    for url, path in [
        (f"{torchserve.shim}/analyze/metadata", "/analyze/metadata"),
        (f"{torchserve.shim}/v1/models/digits/metadata", "/v1/models/{model}/metadata"),
        (f"{torchserve.shim}/v1/models/digits/versions/1/metadata", "/v1/models/{model}/versions/{version}/metadata"),
    ]:
        body = checked(requests.get(url, timeout=30), path, "GET").json()
        assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
        assert body["metadata"]["fastai"] == {
            "task": "classification",
            "classes": [str(d) for d in range(10)],
            "input": "image",
            "precision": "fp32",
            "kind": "vision",
            "inputs": [{"name": "image_bytes", "kind": "image", "size": [32, 32]}],
        }
        assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]


def test_metadata_of_a_segmenter_names_its_codes(torchserve):
    body = requests.get(f"{torchserve.shim}/v1/models/segmenter/metadata", timeout=30).json()
    assert body["metadata"]["fastai"] == {
        "task": "segmentation",
        "classes": ["background", "bright"],
        "input": "image",
        "precision": "fp32",
        "kind": "vision",
        "inputs": [{"name": "image_bytes", "kind": "image", "size": [32, 32]}],
    }


def test_the_openapi_document_is_served(torchserve):
    response = requests.get(f"{torchserve.shim}/openapi.yaml", timeout=5)
    assert response.status_code == 200 and response.text.startswith("openapi: 3.0")


# --- Errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"instances": []}', "empty"),
        (b'{"instances": [], "inputs": []}', "exactly one"),
        (b'{"instances": [{"b64": "@@@"}]}', "not valid base64"),
        (b'{"instances": [{"b64": "aGVsbG8="}]}', "not an image"),
        (b'{"instances": [{"b64": "aGVsbG8="}], "signature_name": "nope"}', "unknown signature_name"),
    ],
)
def test_malformed_requests_get_400_with_the_reason(torchserve, body, message):
    response = checked(requests.post(f"{torchserve.shim}/v1/models/digits:predict", data=body, timeout=60), PREDICT)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_classify_on_a_regression_model_is_a_400(torchserve, exported_learners):
    image = sorted((exported_learners["regressor"].parent / "images").glob("*.png"))[0].read_bytes()
    response = requests.post(
        f"{torchserve.shim}/v1/models/regressor:classify", json={"examples": [{"b64": b64(image)}]}, timeout=60
    )
    assert response.status_code == 400 and "classifier" in response.json()["error"]


@pytest.mark.parametrize(
    "method, path, message",
    [
        ("POST", "/v1/models/no_such_model:predict", "not found"),
        ("GET", "/v1/models/no_such_model", "not found"),
        ("GET", "/v1/models/no_such_model/metadata", "not found"),
        ("POST", "/v1/models/digits/versions/7:predict", "no version 7"),
        ("GET", "/v1/models/digits/versions/7", "no version 7"),
        ("POST", "/v1/models/digits/labels/stable:predict", "label"),
        ("POST", "/v1/models/digits:explain", "unknown method"),
        ("GET", "/v3/models/digits", "no such route"),
    ],
)
def test_unknown_models_versions_and_routes_get_404(torchserve, demo_model, method, path, message):
    body = {"instances": [{"b64": b64(digit_png(demo_model, 0))}]}
    response = requests.request(method, f"{torchserve.shim}{path}", json=body if method == "POST" else None, timeout=30)
    assert response.status_code == 404
    assert message in response.json()["error"]


def test_a_version_that_is_not_a_number_is_a_400(torchserve, demo_model):
    response = requests.get(f"{torchserve.shim}/v1/models/digits/versions/latest", timeout=5)
    assert response.status_code == 400 and "not a number" in response.json()["error"]


def test_a_wrong_method_gets_405_as_json_naming_the_allowed_methods(torchserve):
    response = requests.get(f"{torchserve.shim}/v1/models/digits:predict", timeout=5)
    assert response.status_code == 405 and "POST" in response.json()["error"]
    assert response.headers["Allow"] == "POST, OPTIONS"
    response = requests.put(f"{torchserve.shim}/analyze:predict", data=b"{}", timeout=5)
    assert response.status_code == 405 and "error" in response.json()
    assert response.headers["Allow"] == "POST, OPTIONS"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("TRACE", "/v1/models/digits:predict", "POST, OPTIONS"),
        ("TRACE", "/v1/models/digits/versions/1/metadata", "GET, HEAD, OPTIONS"),
        ("TRACE", "/analyze", "GET, HEAD, OPTIONS"),
        ("TRACE", "/v2/models/digits/infer", "POST, OPTIONS"),
        ("CONNECT", "/ready", "GET, HEAD, OPTIONS"),
    ],
)
def test_a_method_nginx_refuses_itself_gets_the_shims_405_with_allow_and_a_json_error(
    torchserve, method, path, allowed
):
    response = requests.request(method, f"{torchserve.shim}{path}", timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == allowed
    assert response.json() == {"error": f"{method} is not allowed on {path}: it takes {allowed}"}


def test_a_body_over_the_limit_gets_413_before_it_is_read(torchserve):
    too_big = b"{" + b" " * (64 * 1024 * 1024) + b"}"
    response = checked(
        requests.post(f"{torchserve.shim}/analyze:predict", data=too_big, timeout=60), "/analyze:predict"
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_an_input_that_breaks_the_model_is_a_500_and_a_request_sent_beside_it_is_answered(
    torchserve, exported_learners
):
    breaking = io.BytesIO()
    Image.new("RGB", (13, 13)).save(breaking, format="PNG")  # with_utils' transform fails on 13×13 images
    good = sorted((exported_learners["with_utils"].parent / "images").glob("*.png"))[0].read_bytes()
    url = f"{torchserve.shim}/v1/models/with_utils:predict"
    broken, answered = concurrently(
        [
            lambda: requests.post(url, json={"instances": [{"b64": b64(breaking.getvalue())}]}, timeout=60),
            lambda: requests.post(url, json={"instances": [{"b64": b64(good)}]}, timeout=60),
        ]
    )
    checked(broken, PREDICT)
    assert broken.status_code == 500 and "failed on this request" in broken.json()["error"]
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 1


def test_an_upstream_timeout_is_a_504(torchserve, tmp_path, exported_learners):
    process, shim = start_shim(
        tmp_path,
        upstream=torchserve.inference,
        management=torchserve.management,
        predict_timeout_s="0.05",
    )
    try:
        image = sorted((exported_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
        # "classifier" gathers each batch for 400 ms, far longer than this shim waits.
        response = requests.post(
            f"{shim}/v1/models/classifier:predict", json={"instances": [{"b64": b64(image)}]}, timeout=60
        )
        checked(response, PREDICT)
        assert response.status_code == 504 and "did not answer" in response.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_torchserve_down_is_503_on_analyze_and_predict(tmp_path, demo_model, nothing_listens):
    nothing_there = f"http://127.0.0.1:{nothing_listens}"
    process, shim = start_shim(tmp_path, upstream=nothing_there, management=nothing_there, default_model="digits")
    try:
        status = checked(requests.get(f"{shim}/analyze", timeout=5), "/analyze", "GET")
        assert status.status_code == 503 and "unreachable" in status.json()["error"]
        body = json.dumps({"instances": [{"image_bytes": {"b64": b64(digit_png(demo_model, 0))}}]})
        predict = checked(requests.post(f"{shim}/analyze:predict", data=body, timeout=10), "/analyze:predict")
        assert predict.status_code == 503 and "unreachable" in predict.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_store_of_several_models_with_no_default_is_ready_and_analyze_says_how_to_choose(torchserve, tmp_path):
    # The README's "Serve your own Learner" store (the demo beside the user's model), with no default named.
    process, shim = start_shim(tmp_path, upstream=torchserve.inference, management=torchserve.management)
    try:
        ready = checked(requests.get(f"{shim}/ready", timeout=10), "/ready", "GET")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert {"digits", "classifier", "segmenter"} <= set(ready.json()["models"])
        analyze = checked(requests.get(f"{shim}/analyze", timeout=10), "/analyze", "GET")
        assert analyze.status_code == 404 and "FASTAI_SERVING_DEFAULT_MODEL" in analyze.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_ready_is_503_while_torchserve_is_down(tmp_path, nothing_listens):
    nothing_there = f"http://127.0.0.1:{nothing_listens}"
    process, shim = start_shim(tmp_path, upstream=nothing_there, management=nothing_there)
    try:
        response = checked(requests.get(f"{shim}/ready", timeout=10), "/ready", "GET")
        assert response.status_code == 503 and "unreachable" in response.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- KServe v1 and Prometheus ------------------------------------------------------------------------


def test_kserve_v1_routes_answer_as_its_protocol_documents(torchserve, demo_model):
    assert requests.get(f"{torchserve.shim}/", timeout=5).json() == {"status": "alive"}
    assert (
        "digits"
        in checked(requests.get(f"{torchserve.shim}/v1/models", timeout=10), "/v1/models", "GET").json()["models"]
    )
    status = requests.get(f"{torchserve.shim}/v1/models/digits", timeout=10).json()
    assert (status["name"], status["ready"]) == ("digits", True)
    body = {"instances": [{"b64": b64(digit_png(demo_model, 7))}]}
    answer = requests.post(f"{torchserve.shim}/v1/models/digits:predict", json=body, timeout=60).json()
    assert int(np.argmax(answer["predictions"][0])) == 7


def prometheus_samples(text: str) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def requests_counted(samples: list, **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples
        if sample.name == "fastai_serving_requests_total" and labels.items() <= sample.labels.items()
    )


def test_metrics_are_prometheus_text_that_moves_with_traffic_and_carries_torchserves(torchserve, demo_model):
    before = prometheus_samples(requests.get(f"{torchserve.shim}/metrics", timeout=10).text)
    body = {"instances": [{"b64": b64(digit_png(demo_model, d))} for d in range(4)]}
    for _ in range(3):
        assert requests.post(f"{torchserve.shim}/v1/models/digits:predict", json=body, timeout=60).status_code == 200
    response = checked(requests.get(f"{torchserve.shim}/metrics", timeout=10), "/metrics", "GET")
    after = prometheus_samples(response.text)  # parsing it is the check that it is valid Prometheus text
    wanted = {"model": "digits", "verb": "predict", "status": "200"}
    assert requests_counted(after, **wanted) - requests_counted(before, **wanted) >= 3  # the shim's workers, summed
    names = {sample.name for sample in after}
    assert {"fastai_serving_requests_in_flight", "fastai_serving_request_duration_seconds_bucket"} <= names
    # TorchServe's own, re-exported (the parser names a counter's samples <name>_total).
    assert {"ts_queue_latency_microseconds_total", "ts_inference_latency_microseconds_total", "QueueTime"} <= names
    assert next(s.value for s in after if s.name == "fastai_serving_torchserve_metrics_up") == 1


def test_metrics_count_grpc_calls_beside_rest_requests(torchserve, demo_model):
    request = serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"))
    request.inputs["image_bytes"].CopyFrom(
        TensorProto(
            dtype=DataType.DT_STRING,
            string_val=[digit_png(demo_model, 3)],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
    )
    wanted = {"front": "grpc", "model": "digits", "route": "PredictionService/Predict", "status": "OK"}
    before = requests_counted(prometheus_samples(requests.get(f"{torchserve.shim}/metrics", timeout=10).text), **wanted)
    with grpc.insecure_channel(torchserve.grpc) as channel:
        serving_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    after = requests_counted(prometheus_samples(requests.get(f"{torchserve.shim}/metrics", timeout=10).text), **wanted)
    assert after == before + 1


def test_a_made_up_model_name_never_reaches_the_metrics(torchserve):
    assert requests.post(f"{torchserve.shim}/v1/models/made_up_xyz:predict", data=b"{}", timeout=10).status_code == 400
    assert "made_up_xyz" not in requests.get(f"{torchserve.shim}/metrics", timeout=10).text
