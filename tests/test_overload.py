"""Under load, end to end: a request past its deadline is skipped in the queue, and what cannot be answered in time
is refused at once with a hint, on both protocols.

A server of its own (one REST front process), whose fronts keep no queue at all (FASTAI_SERVING_QUEUE_TARGET_S tiny, no interval): once a model has
answered, a request sent while another is in flight is refused. "slow" holds each lone request 4 s (it waits
that long to fill a batch), so one stays in flight while the test sends the next.
"""

from __future__ import annotations

import base64
import threading

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_shim.admission import FrontsTable
from fastai_serving_shim.grpc.errors import RETRY_PUSHBACK
from harness.servers import Servers, archive_here
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

HOLD_MS = 4000  # "slow"'s batch delay: how long a lone request waits in TorchServe for company


@pytest.fixture(scope="module")
def busy(tmp_path_factory, exported_learners):
    store = tmp_path_factory.mktemp("overload-store")
    archive_here("slow", exported_learners["digits"], store, "--max-batch-delay", str(HOLD_MS))
    servers = Servers(
        model_store=store,
        log_dir=tmp_path_factory.mktemp("overload-logs"),
        environment={
            "FASTAI_SERVING_QUEUE_TARGET_S": "0.000001",
            "FASTAI_SERVING_QUEUE_INTERVAL_S": "0",
            # One REST front process: the first answer makes "slow" known to it. A second process's first call
            # would ask TorchServe for the model's description, a job queued to the worker that can end the batch
            # the held request waits in (CI: the held request was answered before the refused one returned).
            "FASTAI_SERVING_WORKERS": "1",
        },
    )
    yield servers.start(["slow"])
    servers.stop(wait=False)


@pytest.fixture(scope="module")
def digit(demo_model) -> bytes:
    return (demo_model / "samples" / "3.png").read_bytes()


def rest_body(image: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(image).decode()}]}


def in_flight(request: callable) -> tuple[threading.Thread, dict]:
    """`request` running on a thread of its own; its answer lands in the dict."""
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.setdefault("response", request()))
    thread.start()
    return thread, answer


def test_a_request_whose_deadline_passes_in_the_queue_is_skipped_without_inference(busy, digit):
    before = len(busy.batch_lines())
    response = requests.post(
        f"{busy.shim}/v1/models/slow:predict", json=rest_body(digit), headers={"X-Request-Timeout": "1"}, timeout=60
    )
    assert response.status_code == 504  # the front gives up at the client's deadline
    wanted = {"requests": 1, "instances": 0, "failed": 1, "expired": 1}  # no image decoded, no forward pass
    assert wanted in busy.batches_since(before, wanted, timeout_s=HOLD_MS / 1000 + 60)


def test_a_request_the_queue_has_no_room_for_is_refused_at_once_with_retry_after_on_rest(busy, digit):
    url = f"{busy.shim}/v1/models/slow:predict"
    assert requests.post(url, json=rest_body(digit), timeout=60).status_code == 200  # the model's pace is known
    counted_before = refused_for_queue(busy)
    holder, held = in_flight(lambda: requests.post(url, json=rest_body(digit), timeout=60))
    wait_for(lambda: admitted(busy) >= 1, "the held request admitted")
    refused = requests.post(url, json=rest_body(digit), timeout=60)
    assert "response" not in held  # still waiting for company in TorchServe's batch while the other was refused
    holder.join(timeout=60)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "refused before queueing" in refused.json()["error"]
    assert held["response"].status_code == 200
    assert refused_for_queue(busy) == counted_before + 1  # fastai_serving_refused_total{model="slow", reason="queue"}


def test_a_call_the_queue_has_no_room_for_is_resource_exhausted_with_retry_pushback_on_grpc(busy, digit):
    stub = serving_grpc.PredictionServiceStub(grpc.insecure_channel(busy.grpc))
    images = TensorProto(
        dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]), string_val=[digit]
    )
    request = serving.PredictRequest(model_spec=serving.ModelSpec(name="slow"), inputs={"image_bytes": images})
    stub.Predict(request, timeout=60)
    holder, held = in_flight(lambda: stub.Predict(request, timeout=60))
    wait_for(lambda: admitted(busy) >= 1, "the held call admitted")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=30)
    assert "response" not in held
    holder.join(timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(refused.value.trailing_metadata())[RETRY_PUSHBACK]) > 0
    assert len(held["response"].outputs["probabilities"].float_val) == 10


def refused_for_queue(servers: Servers) -> float:
    """/metrics' count of "slow"'s requests refused because its queue had no room."""
    text = requests.get(f"{servers.shim}/metrics", timeout=30).text
    wanted = {"model": "slow", "reason": "queue"}
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return sum(s.value for s in samples if s.name == "fastai_serving_refused_total" and s.labels == wanted)


def admitted(servers: Servers) -> int:
    """Instances the fronts admitted to "slow" and have not had answered: their own shared count."""
    return FrontsTable(str(servers.run_dir / "fronts")).count("slow")
