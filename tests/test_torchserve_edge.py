"""TorchServe's edge: its HTTP answers as typed values and `ServingError`s, and nothing of its JSON beyond it.

A stand-in HTTP server answers as TorchServe's inference and management APIs do (their statuses, their
JSON, the handler's headers); tests/test_shim.py checks the same against a real TorchServe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastai_serving.contract.errors import Failure, NotFound, ServingError
from fastai_serving.contract.upstream import (
    FAILURE_HEADER,
    TASK_HEADER,
    VERSION_HEADER,
)
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import HandlerError, ModelVersion, TorchServe, model_path


class TorchServeStandIn(BaseHTTPRequestHandler):
    """Answers every request with the server's `answer`: (status, body, headers)."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        self.server.asked.append((self.command, self.path))
        self.server.headers.append({key.lower(): value for key, value in self.headers.items()})
        status, body, headers = self.server.answer
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def standin() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TorchServeStandIn)
    server.asked, server.headers, server.answer = [], [], (200, b"{}", {})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def torchserve(server: ThreadingHTTPServer) -> TorchServe:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return TorchServe(Settings(upstream=url, management=url, torchserve_metrics=f"{url}/metrics", retry_s=0))


def test_versions_are_typed_with_their_number_readiness_archive_and_ready_workers(standin):
    standin.answer = (200, json.dumps([
        {"modelVersion": "1.0", "modelUrl": "digits.mar", "workers": [{"status": "READY"}, {"status": "READY"}]},
        {"modelVersion": "2.5", "modelUrl": "digits-v2.5.mar", "workers": [{"status": "UNLOADING"}]},
    ]).encode(), {})  # fmt: skip
    versions = torchserve(standin).versions("digits")
    assert versions == [ModelVersion("1.0", True, "digits.mar", 2), ModelVersion("2.5", False, "digits-v2.5.mar", 0)]
    assert [v.number for v in versions] == ["1", "2.5"]  # TF Serving's numbers; "2.5" has none and stays
    assert standin.asked == [("GET", "/models/digits/all")]


def test_an_answer_is_the_handlers_body_and_the_version_and_task_it_names(standin):
    standin.answer = (200, b'{"predictions": [[1.0]]}', {VERSION_HEADER: "2.0", TASK_HEADER: "regression"})
    answer = torchserve(standin).infer("digits", "2.0", b"{}", "application/json", "predict", 5)
    assert (answer.body, answer.version, answer.task, answer.retried) == (
        b'{"predictions": [[1.0]]}',
        "2.0",
        "regression",
        False,
    )
    assert standin.asked == [("POST", "/predictions/digits/2.0")]


def test_the_handlers_own_error_keeps_its_message_and_kind(standin):
    body = b'{"error": "instance 3 is not an image this server can decode"}'
    standin.answer = (400, body, {VERSION_HEADER: "1.0", FAILURE_HEADER: "bad_input"})
    with pytest.raises(HandlerError) as failed:
        torchserve(standin).infer("digits", None, b"{}", "application/json", "predict", 5)
    assert (failed.value.failure, failed.value.message, failed.value.version) == (
        Failure.BAD_INPUT, "instance 3 is not an image this server can decode", "1.0"
    )  # fmt: skip


@pytest.mark.parametrize(
    "status, body, failure, message",
    [
        (404, b'{"code": 404, "message": "Model not found: digits"}', Failure.NOT_FOUND, "model 'digits' not found"),
        (413, b'{"code": 413, "message": "too large"}', Failure.TOO_LARGE, "size limit"),
        (408, b'{"code": 408, "message": "timeout"}', Failure.TIMEOUT, "did not answer in time"),
        (400, b'{"code": 400, "message": "Invalid model version"}', Failure.REFUSED, "Invalid model version"),
        (429, b'{"code": 429, "message": "slow down"}', Failure.REFUSED, "slow down"),
        (507, b'{"code": 507, "message": "Worker died."}', Failure.UNAVAILABLE, "died"),
        (503, b'{"code": 503, "message": "No worker is available"}', Failure.UNAVAILABLE, "retry later"),
        (500, b"<html>oops</html>", Failure.UNAVAILABLE, "retry later"),
    ],
)
def test_torchserves_own_answers_are_failures_of_the_one_vocabulary(standin, status, body, failure, message):
    standin.answer = (status, body, {})
    with pytest.raises(ServingError) as failed:
        torchserve(standin).infer("digits", None, b"{}", "application/json", "predict", 5)
    assert failed.value.failure is failure and message in failed.value.message


def test_an_unregistered_model_is_not_found_by_the_management_api(standin):
    standin.answer = (404, b'{"code": 404, "message": "Model not found: nope"}', {})
    with pytest.raises(NotFound, match="model 'nope' not found"):
        torchserve(standin).versions("nope")


def test_unreachable_torchserve_is_unavailable():
    nowhere = "http://127.0.0.1:9"
    down = TorchServe(
        Settings(upstream=nowhere, management=nowhere, torchserve_metrics=f"{nowhere}/metrics", retry_s=0)
    )
    with pytest.raises(ServingError) as failed:
        down.infer("digits", None, b"{}", "application/json", "predict", 1)
    assert failed.value.failure is Failure.UNAVAILABLE
    assert down.metrics() is None  # the scrape says it could not read them, rather than failing


def test_upstream_urls_escape_each_segment():
    assert model_path("digits", "2.0") == "/digits/2.0"
    assert model_path("a/../b", "1/..") == "/a%2F..%2Fb/1%2F.."
