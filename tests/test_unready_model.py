"""A model without a ready worker: its status, its predictions and the health checks say so, on every front.

A server of its own (the session's server is shared, and scaling one of its models would make other tests'
results depend on their order): digits ready, and the regressor scaled to no worker once it was up.
"""

from __future__ import annotations

import base64

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.servers import Servers, archive_here
from harness.tfserving_client import TFServingClient
from openapi_contract import assert_matches_spec

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def unready(tmp_path_factory, exported_learners):
    store = tmp_path_factory.mktemp("unready-store")
    for name in ("digits", "regressor"):
        archive_here(name, exported_learners[name], store)
    servers = Servers(model_store=store, log_dir=tmp_path_factory.mktemp("unready-logs"), default_model="digits")
    servers.start(["digits", "regressor"])
    servers.management_client().scale("regressor", 0)
    yield servers
    servers.stop(wait=False)


@pytest.fixture(scope="module")
def regressor_image(exported_learners) -> bytes:
    return sorted((exported_learners["regressor"].parent / "images").glob("*.png"))[0].read_bytes()


def test_a_model_without_ready_workers_is_503_on_status_and_predict(unready, regressor_image):
    status = requests.get(f"{unready.shim}/v1/models/regressor", timeout=5)
    assert_matches_spec(status, "/v1/models/{model}", "GET")
    assert status.status_code == 503 and status.json()["ready"] is False
    body = {"instances": [{"b64": base64.b64encode(regressor_image).decode()}]}
    predict = requests.post(f"{unready.shim}/v1/models/regressor:predict", json=body, timeout=60)
    assert predict.status_code == 503 and "error" in predict.json()


def test_a_model_without_ready_workers_is_loading_and_unavailable_and_health_says_so(
    unready, regressor_image, tmp_path
):
    tf_client = TFServingClient(unready.grpc, tmp_path / "tf_client.log")
    try:
        status = tf_client.call("status", model="regressor")
        assert status["model_version_status"][0]["state"] == "LOADING"
        assert status["model_version_status"][0]["status"] == {
            "error_code": "UNAVAILABLE",
            "error_message": "no worker is ready yet",
        }
        predict = tf_client.call("predict", images=[regressor_image], model="regressor")
        assert predict["code"] == "UNAVAILABLE"
    finally:
        tf_client.close()
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(unready.grpc))
    # The health service looks every 2 s: watch until it says so, rather than sleeping past its look.
    watched = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in (answer.status for answer in watched)
    watched.cancel()


def test_the_servers_readiness_names_the_model_that_cannot_serve(unready):
    ready = requests.get(f"{unready.shim}/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["models"] == {"digits": True, "regressor": False}
