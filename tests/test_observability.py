"""Where each request's time went, through scripts/serve: its id from client to handler, the access log.

One server of this module's own serves a small Learner as "digits" with a long batch delay, so concurrent
clients share TorchServe's batches. Real clients: requests over REST, grpc's stubs over gRPC.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.dashboards import dashboard_expressions, queried_metrics, rule_expressions
from harness.learners import synthetic_images
from harness.otlp_receiver import OtlpReceiver
from harness.servers import Servers, archive_here
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

BATCHING = ["--max-batch-delay", "400", "--batch-size", "16"]
BODY_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def servers(tmp_path_factory, exported_learners):
    folder = tmp_path_factory.mktemp("observability")
    archive_here("digits", exported_learners["classifier"], folder / "store", *BATCHING)
    limit = {"FASTAI_SERVING_MAX_BODY_BYTES": str(BODY_LIMIT)}  # a body over it is refused by nginx itself
    running = Servers(model_store=folder / "store", log_dir=folder / "logs", environment=limit)
    yield running.start(["digits"])
    running.stop(wait=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[bytes]:
    return [path.read_bytes() for path in synthetic_images(tmp_path_factory.mktemp("images"), count=4)]


def rest_body(images: list[bytes]) -> dict:
    return {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}} for image in images]}


def access_lines(servers: Servers) -> list[dict]:
    """serve's output's access lines: one JSON object each."""
    text = (servers.log_dir / "serve.out").read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"time"')]


def logged(servers: Servers, request_id: str) -> list[dict]:
    return [line for line in access_lines(servers) if line["request_id"] == request_id]


def test_a_rest_request_id_is_echoed_and_quoted_by_the_access_log_and_the_handler(servers, images):
    response = requests.post(
        f"{servers.shim}/v1/models/digits:predict", json=rest_body(images[:2]), headers={"X-Request-ID": "job-1.tile:9"}
    )
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "job-1.tile:9"
    wait_for(lambda: logged(servers, "job-1.tile:9"), "the request's access line")
    (line,) = logged(servers, "job-1.tile:9")
    assert (line["front"], line["protocol"], line["model"], line["version"]) == ("rest", "tfserving", "digits", "1")
    assert (line["instances"], line["status"]) == (2, "200") and line["queue_seconds"] >= 0
    assert line["seconds"] >= line["queue_seconds"]
    wait_for(lambda: "job-1.tile:9" in servers.model_log(), "the handler's batch line quoting the request's id")


def test_a_grpc_request_id_is_echoed_and_quoted_by_the_access_log_and_the_handler(servers, images):
    request = one_image_request(images[0])
    with grpc.insecure_channel(servers.grpc) as channel:
        _, call = serving_grpc.PredictionServiceStub(channel).Predict.with_call(
            request, metadata=(("x-request-id", "grpc-job-2"),), timeout=60
        )
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-job-2"
    wait_for(lambda: logged(servers, "grpc-job-2"), "the call's access line")
    (line,) = logged(servers, "grpc-job-2")
    assert (line["front"], line["model"], line["instances"], line["status"]) == ("grpc", "digits", 1, "OK")
    wait_for(lambda: "grpc-job-2" in servers.model_log(), "the handler's batch line quoting the call's id")


def test_a_failed_request_is_echoed_and_quoted_with_its_id(servers):
    bad = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
    response = requests.post(f"{servers.shim}/v1/models/digits:predict", json=bad, headers={"X-Request-ID": "bad-3"})
    assert response.status_code == 400 and response.headers["X-Request-ID"] == "bad-3"
    wait_for(lambda: "fastai-serving request bad-3 failed (bad_input)" in servers.model_log(), "the handler's line")
    wait_for(lambda: logged(servers, "bad-3"), "the request's access line")
    assert logged(servers, "bad-3")[0]["status"] == "400"


def test_the_proxys_own_answers_and_the_ones_it_asks_the_shim_for_echo_the_request_id(servers):
    too_large = requests.post(
        f"{servers.shim}/v1/models/digits:predict", data=b"x" * (BODY_LIMIT + 1), headers={"X-Request-ID": "big-4"}
    )
    assert too_large.status_code == 413 and too_large.headers["X-Request-ID"] == "big-4"
    traced = requests.request("TRACE", f"{servers.shim}/v1/models/digits", headers={"X-Request-ID": "trace-5"})
    assert traced.status_code == 405 and traced.headers["X-Request-ID"] == "trace-5"
    unnamed = requests.post(f"{servers.shim}/v1/models/digits:predict", data=b"x" * (BODY_LIMIT + 1))
    assert re.fullmatch(r"[0-9a-f]{32}", unnamed.headers["X-Request-ID"])


# --- The handler's per-stage metrics, on the one scrape target ----------------------------------------

STAGES = ("decode", "transforms", "forward", "encode")


def scraped(servers: Servers) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics for model "digits": (name, its other labels) -> value."""
    text = requests.get(f"{servers.shim}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == "digits":
                others = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model"))
                samples[(sample.name, others)] = sample.value
    return samples


def grown(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def concurrently(calls: list) -> list:
    """Each call at once, from threads of its own (released together); their results in order."""
    barrier = threading.Barrier(len(calls))
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: (barrier.wait(), call())[1], calls))


def test_after_a_known_load_every_stage_counted_each_instance_and_the_queue_each_request(servers, images):
    sizes = [1, 2, 3, 4, 1, 2]
    before = scraped(servers)
    answers = concurrently(
        [
            lambda n=n: requests.post(
                f"{servers.shim}/v1/models/digits:predict", json=rest_body(images[:n]), timeout=60
            )
            for n in sizes
        ]
    )
    assert [answer.status_code for answer in answers] == [200] * len(sizes)
    after = scraped(servers)
    counts = {
        stage: grown(before, after, "fastai_serving_stage_duration_seconds_count", stage=stage) for stage in STAGES
    }
    assert counts == dict.fromkeys(STAGES, sum(sizes))
    assert grown(before, after, "fastai_serving_queue_wait_seconds_count") == len(sizes)
    assert grown(before, after, "fastai_serving_batch_instances_sum") == sum(sizes)
    assert grown(before, after, "fastai_serving_batch_requests_sum") == len(sizes)
    assert grown(before, after, "fastai_serving_stage_duration_seconds_sum", stage="forward") > 0


def test_concurrent_clients_make_batches_of_more_than_one_request(servers, images):
    def a_rest_request() -> int:
        body = rest_body(images[:1])
        return requests.post(f"{servers.shim}/v1/models/digits:predict", json=body, timeout=60).status_code

    shared = 0.0
    for _ in range(3):  # a batch forms within the archive's 400 ms delay: released together, they share one
        before = scraped(servers)
        assert concurrently([a_rest_request] * 8) == [200] * 8
        after = scraped(servers)
        batches = grown(before, after, "fastai_serving_batch_requests_count")
        alone = grown(before, after, "fastai_serving_batch_requests_bucket", le="1.0")
        shared = batches - alone
        if shared:
            break
    assert shared > 0, "no batch held more than one request"


def test_the_upstream_and_running_gauges_are_served_per_model(servers, images):
    requests.post(f"{servers.shim}/v1/models/digits:predict", json=rest_body(images[:1]), timeout=60)
    samples = scraped(servers)
    assert samples[("fastai_serving_upstream_requests_in_flight", ())] == 0  # nothing sent and not answered now
    assert samples[("fastai_serving_worker_requests_running", ())] == 0


# --- deploy/observability's dashboard and rules read what /metrics serves ------------------------------


def test_every_metric_the_dashboard_and_rules_read_is_in_metrics(servers, images):
    body = rest_body(images[:4])
    url = f"{servers.shim}/v1/models/digits:predict"
    assert requests.post(url, json=body, timeout=60).status_code == 200
    # A deadline no batch can meet is refused before the queue: the refusals' counter has its first sample.
    assert requests.post(url, json=body, headers={"X-Request-Timeout": "1ms"}, timeout=60).status_code == 429
    text = requests.get(f"{servers.shim}/metrics", timeout=10).text
    served = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    read = queried_metrics(dashboard_expressions() + rule_expressions())
    assert read - served == set()


# --- OpenTelemetry: a client's traceparent to spans at a real OTLP endpoint -----------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tmp_path_factory, exported_learners):
    """A server of its own whose OTEL_* variables name a real OTLP/HTTP endpoint (exports every 100 ms)."""
    folder = tmp_path_factory.mktemp("traced")
    archive_here("digits", exported_learners["classifier"], folder / "store", *BATCHING)
    receiver = OtlpReceiver()
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    running = Servers(model_store=folder / "store", log_dir=folder / "logs", environment=environment)
    yield running.start(["digits"]), receiver
    running.stop(wait=False)
    receiver.stop()


def of_trace(receiver: OtlpReceiver, trace_id: str) -> dict[str, list]:
    spans: dict[str, list] = {}
    for span in receiver.spans():
        if span.trace_id == trace_id:
            spans.setdefault(span.name, []).append(span)
    return spans


def test_a_rest_requests_traceparent_leads_to_its_span_tree_from_front_to_the_handlers_stages(traced, images):
    servers, receiver = traced
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    response = requests.post(
        f"{servers.shim}/v1/models/digits:predict", json=rest_body(images[:2]), headers={"traceparent": traceparent}
    )
    assert response.status_code == 200
    wanted = {"POST /v1/models/{model}:{verb}", "TorchServe inference", "handler", "queue", *STAGES}
    wait_for(lambda: wanted <= set(of_trace(receiver, TRACE_ID)), f"the spans {sorted(wanted)}", timeout_s=60)
    spans = {name: found[0] for name, found in of_trace(receiver, TRACE_ID).items()}
    front = spans["POST /v1/models/{model}:{verb}"]
    assert front.parent_span_id == CLIENT_SPAN and front.attributes["fastai_serving.status"] == "200"
    assert spans["TorchServe inference"].parent_span_id == front.span_id
    assert spans["handler"].parent_span_id == spans["TorchServe inference"].span_id
    for stage in ("queue", *STAGES):
        assert spans[stage].parent_span_id == spans["handler"].span_id
    (batch_id,) = spans["handler"].links
    batch = next(span for span in receiver.spans() if span.span_id == batch_id)
    assert batch.name == "batch" and batch.attributes["fastai_serving.instances"] >= 2


def test_a_grpc_calls_traceparent_metadata_parents_its_span(traced, images):
    servers, receiver = traced
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    request = one_image_request(images[0])
    with grpc.insecure_channel(servers.grpc) as channel:
        serving_grpc.PredictionServiceStub(channel).Predict(
            request, metadata=(("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01"),), timeout=60
        )
    wait_for(lambda: {"PredictionService/Predict", "forward"} <= set(of_trace(receiver, trace_id)), "the call's spans")
    assert of_trace(receiver, trace_id)["PredictionService/Predict"][0].parent_span_id == CLIENT_SPAN


def test_with_the_otel_variables_unset_no_process_starts_an_exporter(servers, traced, images):
    assert requests.post(f"{servers.shim}/v1/models/digits:predict", json=rest_body(images[:1])).status_code == 200
    traced_servers, _ = traced
    wait_for(lambda: "fastai-serving traces: OTLP" in traced_servers.model_log(), "the traced workers' exporter")
    assert "fastai-serving traces" not in servers.model_log()
    assert "fastai-serving traces" not in (servers.log_dir / "serve.out").read_text(errors="replace")


def one_image_request(image: bytes) -> serving.PredictRequest:
    """TF Serving's Predict of one image to "digits"."""
    tensor = TensorProto(
        dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]), string_val=[image]
    )
    return serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"), inputs={"image_bytes": tensor})
