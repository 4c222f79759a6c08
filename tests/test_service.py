"""The service, driven directly: the use case every front calls, over a typed stand-in for TorchServe.

Each verb resolves the model and version, checks what it can before inference, makes one upstream call and
answers typed values; the descriptions it needs are asked of TorchServe once however many requests need
them at the same moment (asking goes through a worker's queue, behind inference).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_torchserve import DESCRIBED, FakeTorchServe, version

from fastai_serving import defaults
from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import BadInput, NotFound
from fastai_serving_shim.cache import SingleFlight
from fastai_serving_shim.calls import ModelRef, PredictCall
from fastai_serving_shim.protocols.tf_serving import JsonPayload
from fastai_serving_shim.protocols.v2_model import V2Payload
from fastai_serving_shim.protocols.v2_tensors import InferRequest, Tensor
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from harness.waiting import wait_for

BODY = json.dumps({"instances": [{"b64": "aGk="}, {"b64": "aGk="}]}).encode()


def call(model: str = "digits", number: str = "", verb: str = "predict", body: bytes = BODY) -> PredictCall:
    return PredictCall(ModelRef(model, number), verb, JsonPayload(body, read_body(body, verb, raw_allowed=False)))


class Clock:
    """A clock the test moves: the service's caches go stale when it says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_prediction_is_one_upstream_call_answered_with_the_description_of_its_version():
    fake = FakeTorchServe(served={"digits": [version("1.0"), version("2.0")]})
    prediction = Service(Settings(), fake).predict(call(number="2"))
    assert prediction.model == "digits" and prediction.version == "2"
    assert prediction.description.task == "classification" and prediction.description.versions == ("1", "2")
    assert prediction.answers == {"predictions": [[0.25, 0.75]] * 2}
    assert fake.inferred() == [("digits", "2.0", BODY, "predict")]


def test_what_the_task_cannot_answer_is_refused_before_inference():
    fake = FakeTorchServe()  # a classifier
    with pytest.raises(BadInput, match=":regress needs a regression model"):
        Service(Settings(), fake).predict(call(verb="regress", body=b'{"examples": ["aGk="]}'))
    assert fake.count("infer") == 0


def test_the_default_model_is_the_only_one_served_and_a_name_no_model_could_have_is_not_found():
    service = Service(Settings(), FakeTorchServe())
    assert service.predict(call(model="")).model == "digits"
    with pytest.raises(NotFound, match="model names are letters"):
        service.predict(call(model="../etc"))


def test_status_and_description_say_each_version_by_tf_servings_number():
    fake = FakeTorchServe(served={"digits": [version("1.0", ready=False), version("2.0")]})
    service = Service(Settings(), fake)
    status = service.status(ModelRef("digits"))
    assert [(v.version, v.ready) for v in status.versions] == [("1", False), ("2", True)] and status.ready
    assert service.status(ModelRef("digits", "1")).ready is False
    described = service.describe(ModelRef("digits", "2"))
    assert (described.version, described.versions, described.task) == ("2", ("1", "2"), "classification")
    with pytest.raises(NotFound, match="model 'digits' has no version 3"):
        service.describe(ModelRef("digits", "3"))


def test_every_front_counts_instances_from_the_call_whatever_its_protocol():
    """The instances of a v2 request's inputs and of a JSON body count alike (both are the call's)."""
    fake = FakeTorchServe()
    service = Service(Settings(), fake)
    images = InferRequest([Tensor("image_bytes", "BYTES", (3,), [b"a", b"b", b"c"])], [])
    assert V2Payload(images, "digits").instances == 3 == len(service.predict(
        PredictCall(ModelRef("digits"), "predict", V2Payload(images, "digits"))
    ).answers["predictions"])  # fmt: skip


def test_a_description_storm_after_it_expires_asks_torchserve_once():
    """64 concurrent v2 requests after the cached description went stale: at most one describe call upstream
    (the stale description answers them while one refresh runs), and none at all on the hot path of the rest."""
    clock = Clock()
    fake = FakeTorchServe(described=DESCRIBED["classification"])
    release = threading.Event()
    described_calls = []

    def slow_describe(model: str, version: str) -> dict:
        described_calls.append((model, version))
        release.wait(timeout=30)  # TorchServe's describe waits in the worker's queue
        return dict(fake.described)

    service = Service(Settings(), fake)
    service._descriptions = SingleFlight(defaults.METADATA_CACHE_S, clock)
    service.predict(call())  # the first request loads it
    fake.describe = slow_describe
    clock.now += defaults.METADATA_CACHE_S + 1  # stale now
    images = InferRequest([Tensor("image_bytes", "BYTES", (1,), [b"a"])], [])
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(
            lambda _: service.predict(PredictCall(ModelRef("digits"), "predict", V2Payload(images, "digits"))),
            range(64),
        ))  # fmt: skip
        release.set()
    assert len(answers) == 64 and all(a.description.task == "classification" for a in answers)
    assert len(described_calls) <= 1


def test_a_first_load_is_shared_by_every_caller_waiting_for_it():
    cache: SingleFlight[int] = SingleFlight(ttl_s=60)
    started, release, loads = threading.Event(), threading.Event(), []

    def load() -> int:
        loads.append(1)
        started.set()
        release.wait(timeout=30)
        return 7

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(cache.get, "key", load)
        assert started.wait(timeout=30)
        others = [pool.submit(cache.get, "key", load) for _ in range(7)]
        release.set()
        assert [f.result(timeout=30) for f in [first, *others]] == [7] * 8
    assert len(loads) == 1


def test_a_failed_load_fails_its_waiters_and_the_next_caller_loads_again():
    cache: SingleFlight[int] = SingleFlight(ttl_s=60)
    with pytest.raises(NotFound):
        cache.get("key", lambda: (_ for _ in ()).throw(NotFound("not yet")))
    assert cache.get("key", lambda: 3) == 3


def test_a_stale_value_is_served_while_one_refresh_runs_in_the_background():
    clock = Clock()
    cache: SingleFlight[str] = SingleFlight(ttl_s=10, clock=clock)
    assert cache.get("key", lambda: "old") == "old"
    clock.now += 11
    release = threading.Event()

    def refresh() -> str:
        release.wait(timeout=30)
        return "new"

    assert [cache.get("key", refresh) for _ in range(5)] == ["old"] * 5  # one refresh started, none waited for
    release.set()
    wait_for(lambda: cache.get("key", lambda: "never asked") == "new", "the refreshed value")


def test_readiness_lists_every_model_it_waits_for():
    fake = FakeTorchServe(served={"digits": [version("1.0")], "broken": [version("1.0", ready=False)]})
    readiness = Service(Settings(store_models="digits,roads"), fake).readiness()
    assert (readiness.ready, readiness.models) == (False, {"digits": True, "roads": False, "broken": False})
