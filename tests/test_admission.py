"""Load: what is refused before the queue, what is skipped in it, and the deadlines that decide both.

In-process: the admission rule and its shared count of instances in flight, the service with a typed
stand-in for TorchServe, the REST front's 429 and the gRPC front's RESOURCE_EXHAUSTED with their hints.
tests/test_overload.py drives a real server into refusing.
"""

from __future__ import annotations

import json
import multiprocessing
import time

import grpc
import pytest
from fake_torchserve import FakeTorchServe

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.deadlines import Deadline, deadline_of, expired
from fastai_serving.contract.errors import Failure, Overloaded
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_shim.admission import Admission, FrontsTable, Pace, StandingQueue, refusal
from fastai_serving_shim.calls import ModelRef, PredictCall
from fastai_serving_shim.grpc.errors import RETRY_PUSHBACK
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.protocols.tf_serving import JsonPayload
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.rest.timeouts import request_timeout_s
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import Answer

BODY = json.dumps({"instances": [{"b64": "aGk="}] * 4}).encode()


def paced(per_instance_s: float, forward_instances: int = 16) -> Answer:
    """An answer that says how long its batch took: 4 instances at `per_instance_s` each."""
    body = json.dumps({"predictions": [[0.25, 0.75]] * 4}).encode()
    return Answer(body, "1.0", "classification", False, 4 * per_instance_s, 4, forward_instances)


def call(timeout_s: float | None = None) -> PredictCall:
    return PredictCall(ModelRef("digits"), "predict", JsonPayload(BODY, read_body(BODY, "predict")), timeout_s)


# --- The rule -----------------------------------------------------------------------------------------


def test_nothing_is_refused_before_the_model_has_answered_once():
    assert refusal(None, ahead=10_000, instances=8, workers=1, timeout_s=0.01, target_s=0) is None


def test_without_room_in_the_queue_a_request_is_refused_whatever_its_deadline():
    pace = Pace(per_instance_s=0.04, forward_instances=16)  # 25 instances/s; the target: 2 × 0.64 s = 1.28 s
    assert refusal(pace, ahead=32, instances=8, workers=1, timeout_s=None, target_s=0) is None
    reason, retry_after_s = refusal(pace, ahead=40, instances=8, workers=1, timeout_s=None, target_s=0)
    assert reason == "queue" and retry_after_s == pytest.approx(40 * 0.04 - 1.28)
    assert refusal(pace, ahead=40, instances=8, workers=1, timeout_s=60, target_s=0)[0] == "queue"


def test_a_deadline_its_batch_cannot_meet_is_refused_even_with_room_in_the_queue():
    """Its answer comes when its TorchServe batch is done, which may hold as much again as was ahead of it."""
    pace = Pace(per_instance_s=0.04, forward_instances=16)
    assert refusal(pace, ahead=20, instances=8, workers=1, timeout_s=5, target_s=0) is None  # 2 × 28 × 0.04 = 2.24
    reason, retry_after_s = refusal(pace, ahead=20, instances=8, workers=1, timeout_s=2, target_s=0)
    assert reason == "deadline" and retry_after_s == pytest.approx((2.24 - 2) / 2)


def test_more_workers_answer_faster_so_more_may_wait():
    pace = Pace(per_instance_s=0.04, forward_instances=16)
    assert refusal(pace, ahead=40, instances=8, workers=1, timeout_s=None, target_s=0) is not None
    assert refusal(pace, ahead=40, instances=8, workers=2, timeout_s=None, target_s=0) is None


def test_a_configured_queue_target_replaces_two_forward_passes():
    pace = Pace(per_instance_s=0.04, forward_instances=16)
    assert refusal(pace, ahead=40, instances=8, workers=1, timeout_s=None, target_s=5) is None
    assert refusal(pace, ahead=1, instances=8, workers=1, timeout_s=None, target_s=0.001)[0] == "queue"


def test_a_fast_model_keeps_a_second_of_queue_so_a_handful_of_clients_is_served_not_refused():
    pace = Pace(per_instance_s=0.003, forward_instances=16)  # two passes: 96 ms; the floor: a second
    assert refusal(pace, ahead=300, instances=16, workers=1, timeout_s=None, target_s=0) is None  # 0.9 s ahead
    assert refusal(pace, ahead=400, instances=16, workers=1, timeout_s=None, target_s=0)[0] == "queue"


def test_a_burst_is_queued_and_only_a_wait_that_stands_over_the_target_for_the_interval_is_refused():
    queue = StandingQueue(interval_s=1.0)
    assert [queue.refuses(over=True, now=t) for t in (0.0, 0.4, 0.9)] == [False, False, False]  # a burst
    assert queue.refuses(over=True, now=1.0)  # over for the whole interval: a standing queue
    assert not queue.refuses(over=False, now=1.2)  # under the target: admitted...
    assert queue.refuses(over=True, now=1.3)  # ...and refused again as soon as it is over, while it stands
    assert not queue.refuses(over=False, now=1.4) and not queue.refuses(over=False, now=2.5)  # under for the interval
    assert not queue.refuses(over=True, now=2.6)  # no longer standing: the next burst is let in whole


def test_looks_at_the_queue_further_apart_than_the_interval_start_afresh():
    queue = StandingQueue(interval_s=1.0)
    assert not queue.refuses(over=True, now=0.0)
    assert not queue.refuses(over=True, now=5.0)  # over then and now; what came between was not seen


def test_admission_lets_sixteen_clients_at_once_in_and_refuses_the_queue_they_keep_standing():
    now = [0.0]
    table = FrontsTable()
    admission = Admission(table, target_s=0, interval_s=1.0, clock=lambda: now[0])
    table.observe("digits", batch_seconds=0.64, batch_instances=16, forward_instances=16)  # 40 ms an instance
    for _ in range(16):  # 128 instances: 5 s of work arriving at once, far over the 1.28 s target
        admission.admit("digits", 8, workers=1, timeout_s=None)
    now[0] = 1.0  # none answered a second later: the queue stands
    with pytest.raises(Overloaded) as refused:
        admission.admit("digits", 8, workers=1, timeout_s=None)
    assert refused.value.reason == "queue" and table.count("digits") == 128


def test_the_pace_is_the_batches_seconds_over_their_instances_so_lone_requests_do_not_make_full_batches_look_slow():
    table = FrontsTable()
    table.observe("digits", batch_seconds=1.0, batch_instances=64, forward_instances=64)  # 15.6 ms an instance
    for _ in range(3):
        table.observe("digits", batch_seconds=0.05, batch_instances=1, forward_instances=64)  # a lone one's 50 ms
    assert table.pace("digits").per_instance_s == pytest.approx(1 / 64, rel=0.25)


# --- The shared count ----------------------------------------------------------------------------------


def _add_and_wait(path: str, ready, release) -> None:
    table = FrontsTable(path)
    table.add("digits", 5)
    table.observe("digits", batch_seconds=0.5, batch_instances=5, forward_instances=16)
    ready.set()
    release.wait(30)


def test_every_front_process_sees_the_others_in_flight_instances_and_pace_until_it_is_gone(tmp_path):
    path = str(tmp_path / "fronts")
    here = FrontsTable(path)
    here.add("digits", 3)
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    other = context.Process(target=_add_and_wait, args=(path, ready, release))
    other.start()
    assert ready.wait(60)
    assert (here.count("digits"), here.count("roads")) == (8, 0)
    assert here.pace("digits") == Pace(0.1, 16) and here.pace("roads") is None  # heard by the other process only
    release.set()
    other.join(60)
    here._checked = 0.0  # look for gone processes at the next count, not a second later
    assert here.count("digits") == 3


# --- Deadlines in the queue ------------------------------------------------------------------------------


def test_a_request_is_skipped_once_the_earlier_of_its_deadlines_has_passed():
    sent = 1000.0
    deadline = deadline_of(str(sent), str(sent + 2), max_queue_s=30)
    assert deadline == Deadline(sent + 2, "the client's deadline")
    assert expired(deadline, now=sent + 1.9) is None
    late = expired(deadline, now=sent + 2.5)
    assert (
        late.failure is Failure.TIMEOUT
        and "the client's deadline passed 0.50 s before its batch started" in late.message
    )
    assert deadline_of(str(sent), None, max_queue_s=30).at == sent + 30  # no client deadline: the longest wait
    assert deadline_of(None, "soon", max_queue_s=30) is None  # nothing readable: never skipped


# --- The service and the fronts --------------------------------------------------------------------------


def test_a_request_that_cannot_meet_its_deadline_is_refused_before_it_goes_upstream():
    fake = FakeTorchServe(answer=paced(per_instance_s=0.5))
    service = Service(Settings(), fake)
    service.predict(call())  # its answer says how long 4 instances took: 2 s
    service.admission.table.add("digits", 10)  # 10 instances ahead: 5 s
    with pytest.raises(Overloaded) as refused:
        service.predict(call(timeout_s=3))
    assert refused.value.reason == "deadline" and refused.value.retry_after_s > 0
    assert fake.count("infer") == 1


def test_a_refusal_is_counted_under_its_model_and_reason():
    from prometheus_client import REGISTRY

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("fastai_serving_refused_total", {"model": "digits", "reason": reason}) or 0.0

    service = Service(Settings(), FakeTorchServe(answer=paced(per_instance_s=0.5)))
    service.predict(call())
    service.admission.table.add("digits", 10)
    before = refused("deadline")
    with pytest.raises(Overloaded):
        service.predict(call(timeout_s=3))
    assert refused("deadline") == before + 1


def test_a_deadline_goes_upstream_and_every_admitted_instance_is_counted_out_again():
    fake = FakeTorchServe(answer=paced(per_instance_s=0.001))
    service = Service(Settings(), fake)
    before = time.time()
    service.predict(call(timeout_s=5))
    (_, _, _, _, _, _, timeout_s),  = [c for c in fake.calls if c[0] == "infer"]  # fmt: skip
    assert 0 < timeout_s <= 5 and service.admission.table.count("digits") == 0
    assert fake.deadlines[-1] == pytest.approx(before + 5, abs=1)


def test_rest_answers_a_refusal_429_with_retry_after_in_whole_seconds():
    fake = FakeTorchServe(answer=paced(per_instance_s=0.5))
    client = create_app(Settings(), upstream=fake).test_client()
    assert client.post("/v1/models/digits:predict", data=BODY).status_code == 200
    client.application.extensions["fastai_serving"].admission.table.add("digits", 10)
    response = client.post("/v1/models/digits:predict", data=BODY, headers={"X-Request-Timeout": "3"})
    assert response.status_code == 429 and response.headers["Retry-After"].isdigit()
    assert int(response.headers["Retry-After"]) >= 1 and "refused before queueing" in response.json["error"]


@pytest.mark.parametrize("header, seconds", [("5", 5.0), ("2.5", 2.5), ("5s", 5.0), ("500ms", 0.5), (" 3 S ", 3.0)])
def test_a_rest_deadline_is_the_x_request_timeout_header_in_seconds_or_milliseconds(header, seconds):
    assert request_timeout_s({"X-Request-Timeout": header}) == seconds


@pytest.mark.parametrize("header", ["soon", "-1", "0", "5 minutes", ""])
def test_a_rest_deadline_that_is_not_a_duration_is_a_400(header):
    response = (
        create_app(Settings(), upstream=FakeTorchServe())
        .test_client()
        .post("/v1/models/digits:predict", data=BODY, headers={"X-Request-Timeout": header})
    )
    assert response.status_code == 400 and "is not a duration" in response.json["error"]


def test_grpc_answers_a_refusal_resource_exhausted_with_retry_pushback_in_its_trailing_metadata():
    fake = FakeTorchServe(answer=paced(per_instance_s=0.5))
    settings = Settings(host="127.0.0.1", grpc_port=0)
    front = GrpcFront(settings, Service(settings, fake)).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub = serving_grpc.PredictionServiceStub(channel)
            images = TensorProto(
                dtype=DataType.DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=4)]),
                string_val=[b"png"] * 4,
            )  # fmt: skip
            request = serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"), inputs={"x": images})
            stub.Predict(request, timeout=30)
            front.service.admission.table.add("digits", 10)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request, timeout=3)
    finally:
        front.stop(grace_s=0)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pushback = dict(refused.value.trailing_metadata())[RETRY_PUSHBACK]
    assert int(pushback) > 0
