"""Who may call, end to end: scripts/serve with API keys and TLS on, a real TorchServe, real TLS and the clients
users run (curl, requests, grpcio, TF Serving's client, tritonclient, KServe's, predict-batch).

Certificates are made by the tests (harness/certificates.py). One server with keys and TLS serves most tests;
one more requires client certificates (mTLS). docs/security.md's snippets run here against the first.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
import requests

from fastai_serving import defaults
from fastai_serving_protos import open_inference_pb2, open_inference_pb2_grpc
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from fastai_serving_scripts import healthcheck
from harness import PROJECT_ROOT
from harness.certificates import Authority, replace
from harness.servers import Servers, archive_here
from harness.tfserving_client import TFCLIENT_VENV
from harness.v2_clients import V2CLIENT_VENV
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

KEYS = {"pipeline-a": "a1" * 16, "pipeline-b": "b2" * 16, "ops": "c3" * 16}
PREDICT_BATCH = str(PROJECT_ROOT / "scripts" / "predict-batch")
SECURITY_PAGE = PROJECT_ROOT / "docs" / "security.md"
# A key revoked is refused at the latest once each front looked at the file again: a request sent this long
# after the edit was checked after it (each worker looks at most every ACCESS_CHECK_S, at its next request).
REVOKED_WITHIN_S = 2 * defaults.ACCESS_CHECK_S


def key_file_text(names: list[str]) -> str:
    return "".join(f"{name}: {KEYS[name]}\n" for name in names)


class Secured:
    """A served digits model with keys and TLS on: its servers, files, and how each client reaches it."""

    def __init__(self, folder: Path, store: Path, client_ca: bool = False) -> None:
        self.folder = folder
        self.authority = Authority(folder / "ca")
        self.cert, self.key = folder / "tls" / "tls.crt", folder / "tls" / "tls.key"
        self.cert.parent.mkdir()
        pair = self.authority.issue("server")
        replace(pair.cert, self.cert)
        replace(pair.key, self.key)
        self.keys_file = folder / "keys" / "api-keys"
        self.keys_file.parent.mkdir()
        self.keys_file.write_text(key_file_text(list(KEYS)))
        self.trusted = folder / "trusted.pem"  # what this test's clients trust: the CA, and a renewed one later
        shutil.copy(self.authority.cert, self.trusted)
        environment = {
            "FASTAI_SERVING_API_KEYS_FILE": str(self.keys_file),
            "FASTAI_SERVING_TLS_CERT_FILE": str(self.cert),
            "FASTAI_SERVING_TLS_KEY_FILE": str(self.key),
        }
        if client_ca:
            environment["FASTAI_SERVING_TLS_CLIENT_CA_FILE"] = str(self.authority.cert)
            environment["FASTAI_SERVING_METRICS_ACCESS"] = "loopback"
        self.client = self.authority.issue("pipeline", client=True)
        self.servers = Servers(
            model_store=store, log_dir=folder / "logs", default_model="digits", environment=environment,
            ca=self.authority.cert, api_key=KEYS["ops"],
        )  # fmt: skip
        self.client_ca = client_ca

    def start(self) -> Secured:
        if self.client_ca:
            self._start_with_client_certificates()
        else:
            self.servers.start(["digits"])
        return self

    def _start_with_client_certificates(self) -> None:
        """The harness's readiness check needs a client certificate too: this server's own check."""
        self.servers.shim_ready = lambda model: _quietly(
            lambda: self.rest_get(f"/v1/models/{model}", "ops").status_code == 200
        )
        self.servers.start(["digits"])

    @property
    def rest(self) -> str:
        return f"https://localhost:{self.servers.shim_port}"

    @property
    def grpc_address(self) -> str:
        return f"localhost:{self.servers.grpc_port}"

    def session(self, key: str | None = None, header: str = "Authorization") -> requests.Session:
        """A client of the server; trust_env off: REQUESTS_CA_BUNDLE, where set, would replace the session's verify."""
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.trusted)
        if self.client_ca:
            session.cert = (str(self.client.cert), str(self.client.key))
        if key is not None:
            session.headers[header] = f"Bearer {KEYS[key]}" if header == "Authorization" else KEYS[key]
        return session

    def rest_get(self, path: str, key: str | None = None) -> requests.Response:
        return self.session(key).get(self.rest + path, timeout=30)

    def channel(self, with_client_certificate: bool | None = None) -> grpc.Channel:
        client = self.client_ca if with_client_certificate is None else with_client_certificate
        credentials = grpc.ssl_channel_credentials(
            self.trusted.read_bytes(),
            self.client.key.read_bytes() if client else None,
            self.client.cert.read_bytes() if client else None,
        )
        return grpc.secure_channel(self.grpc_address, credentials)

    def stop(self, wait: bool = True) -> None:
        self.servers.stop(wait)


def _quietly(check) -> bool:
    try:
        return check()
    except (requests.RequestException, OSError):
        return False


def metadata(key: str | None, value: str | None = None) -> list[tuple[str, str]]:
    return [("authorization", value or f"Bearer {KEYS[key]}")] if key or value else []


@pytest.fixture(scope="module")
def image(demo_model) -> bytes:
    return (demo_model / "samples" / "3.png").read_bytes()


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory, exported_learners) -> Path:
    store = tmp_path_factory.mktemp("digits-store")
    archive_here("digits", exported_learners["digits"], store)
    return store


@pytest.fixture(scope="module")
def secured(tmp_path_factory, digits_store):
    server = Secured(tmp_path_factory.mktemp("secured"), digits_store).start()
    yield server
    server.stop(wait=False)


def tf_body(image: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(image).decode()}]}


def v2_body(image: bytes) -> dict:
    data = [base64.b64encode(image).decode()]
    return {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": data}]}


def predict_request(image: bytes) -> serving.PredictRequest:
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)])
    tensor = TensorProto(dtype=DataType.DT_STRING, tensor_shape=shape, string_val=[image])
    return serving.PredictRequest(model_spec=serving.ModelSpec(name="digits"), inputs={"image_bytes": tensor})


def infer_request(image: bytes) -> open_inference_pb2.ModelInferRequest:
    tensor = open_inference_pb2.ModelInferRequest.InferInputTensor(name="image_bytes", datatype="BYTES", shape=[1])
    raw = struct.pack("<I", len(image)) + image  # a BYTES tensor's raw contents: each element after its length
    return open_inference_pb2.ModelInferRequest(model_name="digits", inputs=[tensor], raw_input_contents=[raw])


def rest_status(secured: Secured, route: str, image: bytes, key: str | None, header: str = "Authorization") -> int:
    body = tf_body(image) if route == "tfserving" else v2_body(image)
    path = "/v1/models/digits:predict" if route == "tfserving" else "/v2/models/digits/infer"
    return secured.session(key, header).post(secured.rest + path, json=body, timeout=60).status_code


def grpc_code(channel: grpc.Channel, protocol: str, image: bytes, credentials: list) -> str:
    try:
        if protocol == "tfserving":
            serving_grpc.PredictionServiceStub(channel).Predict(
                predict_request(image), timeout=60, metadata=credentials
            )
        else:
            open_inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request(image), timeout=60, metadata=credentials
            )
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


# --- Keys on every protocol and transport ---------------------------------------------------------------


def test_serve_says_keys_and_tls_are_on_naming_the_keys_but_no_path(secured):
    said = (secured.servers.log_dir / "serve.out").read_text()
    assert "serve: API keys: on (3: ops, pipeline-a, pipeline-b); health open, /metrics open" in said
    assert "serve: TLS: on for the REST and gRPC fronts" in said and "serve: WARNING" not in said
    assert not any(str(path) in said for path in (secured.cert, secured.key, secured.keys_file))


@pytest.mark.parametrize("route", ["tfserving", "v2"])
def test_rest_accepts_the_right_key_in_either_header_and_refuses_a_missing_or_wrong_one(secured, image, route):
    assert rest_status(secured, route, image, "pipeline-a") == 200
    assert rest_status(secured, route, image, "pipeline-a", header="X-API-Key") == 200
    assert rest_status(secured, route, image, None) == 401
    response = secured.session().post(secured.rest + "/v1/models/digits:predict", json=tf_body(image),
                                      headers={"Authorization": "Bearer " + "f" * 32}, timeout=60)  # fmt: skip
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "mistyped, or revoked" in response.json()["error"]


@pytest.mark.parametrize("protocol", ["tfserving", "v2"])
def test_grpc_accepts_the_right_key_and_refuses_a_missing_or_wrong_one(secured, image, protocol):
    with secured.channel() as channel:
        assert grpc_code(channel, protocol, image, metadata("pipeline-a")) == "OK"
        assert grpc_code(channel, protocol, image, metadata(None)) == "UNAUTHENTICATED"
        assert grpc_code(channel, protocol, image, metadata(None, "Bearer " + "f" * 32)) == "UNAUTHENTICATED"


def test_the_images_healthcheck_passes_over_tls(secured):
    environment = {"FASTAI_SERVING_PORT": str(secured.servers.shim_port), "FASTAI_SERVING_TLS_CERT_FILE": "set"}
    assert healthcheck.main(environment) == 0


def test_health_stays_open_on_both_ports_for_probes(secured):
    assert secured.rest_get("/ready").status_code == 200 and secured.rest_get("/").status_code == 200
    assert secured.rest_get("/v1/models/digits").status_code == 401
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with secured.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # SERVING once the front's readiness poll has seen the models ready, as REST's /ready says already
        deadline = time.monotonic() + 30
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        while status == health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.2)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_key_revoked_by_editing_the_file_under_load_is_refused_within_seconds_and_no_other_request_fails(
    secured, image
):
    """pipeline-b is revoked while both keys send predictions on both ports: every answer before the edit was
    200, pipeline-a is never refused, and pipeline-b is refused once the fronts looked at the file again."""
    answers: list[tuple[str, str, float, float, object]] = []  # (key, port, sent, answered, status)
    lock, stop = threading.Lock(), threading.Event()

    def rest_load(key: str) -> None:
        session = secured.session(key)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status: object = session.post(secured.rest + "/v1/models/digits:predict", json=tf_body(image),
                                              timeout=60).status_code  # fmt: skip
            except requests.RequestException as error:
                status = type(error).__name__
            with lock:
                answers.append((key, "rest", sent, time.monotonic(), status))

    def grpc_load(key: str) -> None:
        with secured.channel() as channel:
            while not stop.is_set():
                sent = time.monotonic()
                code = grpc_code(channel, "tfserving", image, metadata(key))
                with lock:
                    answers.append((key, "grpc", sent, time.monotonic(), code))

    loads = [(rest_load, "pipeline-a"), (rest_load, "pipeline-b"), (grpc_load, "pipeline-a"), (grpc_load, "pipeline-b")]
    with ThreadPoolExecutor(len(loads)) as pool:
        running = [pool.submit(load, key) for load, key in loads]
        wait_for(lambda: len({(a[0], a[1]) for a in answers if a[4] in (200, "OK")}) == 4, "every load answered")
        edited = time.monotonic()
        replacement = secured.keys_file.with_name("api-keys.new")
        replacement.write_text(key_file_text(["pipeline-a", "ops"]))
        replacement.rename(secured.keys_file)  # as a Secret or an editor's save: whole, at once
        wait_for(lambda: any(a[2] > edited + REVOKED_WITHIN_S for a in answers if a[0] == "pipeline-b" and a[1] == "rest")
                 and any(a[2] > edited + REVOKED_WITHIN_S for a in answers if a[0] == "pipeline-b" and a[1] == "grpc"),
                 "pipeline-b's requests well after the edit")  # fmt: skip
        stop.set()
        for load in running:
            load.result()
    restore_keys(secured, image)
    before = [a for a in answers if a[3] < edited]
    assert before and all(a[4] in (200, "OK") for a in before), "an answer before the edit was not a success"
    assert all(a[4] in (200, "OK") for a in answers if a[0] == "pipeline-a"), "pipeline-a was refused"
    late = [a for a in answers if a[0] == "pipeline-b" and a[2] > edited + REVOKED_WITHIN_S]
    assert late and all(a[4] in (401, "UNAUTHENTICATED") for a in late), "pipeline-b still answered after revocation"
    assert all(a[4] in (200, "OK", 401, "UNAUTHENTICATED") for a in answers), "a request was lost"


def restore_keys(secured: Secured, image: bytes) -> None:
    """Every key back, read by every front process on SIGHUP (each says so in the log) before the next test."""
    log = secured.servers.log_dir / "serve.out"
    said_before = log.stat().st_size
    secured.keys_file.write_text(key_file_text(list(KEYS)))
    os.kill(secured.servers.process.pid, signal.SIGHUP)
    fronts = key_reading_processes(secured)
    wait_for(lambda: fronts <= read_on_sighup(log, said_before), "every front process read the key file on SIGHUP")
    with secured.channel() as channel:
        wait_for(lambda: rest_status(secured, "tfserving", image, "pipeline-b") == 200
                 and grpc_code(channel, "tfserving", image, metadata("pipeline-b")) == "OK", "every key back")  # fmt: skip


def key_reading_processes(secured: Secured) -> set[int]:
    """The processes that read the key file, each for itself: the gRPC front and each REST worker (not their master)."""
    serve = psutil.Process(secured.servers.process.pid)
    found = set()
    for process in serve.children(recursive=True):
        command = " ".join(process.cmdline())
        rest_worker = "fastai_serving_shim.rest.wsgi" in command and process.ppid() != serve.pid
        if rest_worker or "fastai_serving_shim.grpc.server" in command:
            found.add(process.pid)
    return found


def read_on_sighup(log: Path, after: int) -> set[int]:
    """The processes that logged reading the key file on SIGHUP past byte `after` of the log."""
    with log.open("rb") as said:
        said.seek(after)
        return {int(pid) for pid in re.findall(rb"API keys: read again \(SIGHUP, process (\d+)\)", said.read())}


def test_sighup_to_serve_reads_a_key_file_whose_change_no_stat_shows(secured, image):
    """The file rewritten in place with the same size and times: only SIGHUP makes the fronts read it."""
    status = os.stat(secured.keys_file)
    swapped = {"pipeline-a": KEYS["pipeline-a"], "pipeline-b": KEYS["pipeline-b"], "ops": "d4" * 16}
    text = "".join(f"{name}: {key}\n" for name, key in swapped.items())
    with open(secured.keys_file, "r+") as edited:  # same inode, same size
        edited.write(text)
    os.utime(secured.keys_file, ns=(status.st_atime_ns, status.st_mtime_ns))
    new_ops = {"Authorization": f"Bearer {'d4' * 16}"}
    ready = secured.session().get  # /v1/models/digits with the new ops key
    assert ready(secured.rest + "/v1/models/digits", headers=new_ops, timeout=30).status_code == 401
    os.kill(secured.servers.process.pid, signal.SIGHUP)
    with secured.channel() as channel:
        wait_for(lambda: ready(secured.rest + "/v1/models/digits", headers=new_ops, timeout=30).status_code == 200
                 and grpc_code(channel, "tfserving", image, metadata(None, new_ops["Authorization"])) == "OK",
                 "the new key accepted on both ports after SIGHUP")  # fmt: skip
        assert [ready(secured.rest + "/v1/models/digits", headers=new_ops, timeout=30).status_code
                for _ in range(8)] == [200] * 8  # every worker read it  # fmt: skip
    restore_keys(secured, image)


def test_predict_batch_sends_its_token_file_over_tls_on_both_protocols(secured, demo_model, tmp_path):
    token = tmp_path / "api-key.txt"
    token.write_text(KEYS["pipeline-a"] + "\n")
    images = demo_model / "samples"
    for protocol, server in (("rest", secured.rest), ("grpc", secured.grpc_address)):
        out = tmp_path / f"{protocol}.jsonl"
        done = subprocess.run([PREDICT_BATCH, str(images), "--server", server, "--protocol", protocol, "--model",
                               "digits", "--token-file", str(token), "--ca", str(secured.trusted), "--out", str(out)],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(out.read_text().splitlines()) == len(list(images.glob("*.png")))
    refused = subprocess.run([PREDICT_BATCH, str(images), "--server", secured.rest, "--model", "digits", "--ca",
                              str(secured.trusted), "--out", str(tmp_path / "none.jsonl")],
                             capture_output=True, text=True, timeout=180)  # fmt: skip
    assert refused.returncode == 1 and "401" in refused.stderr and "needs an API key" in refused.stderr


# --- TLS ------------------------------------------------------------------------------------------------


def test_rest_speaks_http2_and_http11_over_tls_12_or_13_and_refuses_older_protocols_and_plain_http(secured):
    curl = ["curl", "-s", "--cacert", str(secured.trusted), "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
    assert subprocess.run([*curl, "--http2", secured.rest + "/ready"], capture_output=True, text=True).stdout == "2 200"
    assert (
        subprocess.run([*curl, "--http1.1", secured.rest + "/ready"], capture_output=True, text=True).stdout
        == "1.1 200"
    )
    old = subprocess.run(
        [*curl, "--tlsv1.0", "--tls-max", "1.1", secured.rest + "/ready"], capture_output=True, text=True
    )
    assert old.returncode == 35  # curl: the TLS handshake failed
    plain = requests.get(f"http://localhost:{secured.servers.shim_port}/ready", timeout=10)
    assert plain.status_code == 400 and plain.json() == {"error": "this port speaks TLS: use https://"}


def snippets() -> dict[str, tuple[str, str]]:
    """docs/security.md's snippets: name -> (language, code), each marked `<!-- snippet: NAME -->`."""
    found = re.findall(r"<!-- snippet: ([\w-]+) -->\n```(\w+)\n(.*?)```", SECURITY_PAGE.read_text(), re.DOTALL)
    return {name: (language, code) for name, language, code in found}


SNIPPET_PYTHONS = {"requests": Path(".venv"), "tfserving": TFCLIENT_VENV, "triton-http": V2CLIENT_VENV,
                   "triton-grpc": V2CLIENT_VENV, "kserve": V2CLIENT_VENV}  # fmt: skip


def test_the_security_page_shows_each_real_client_calling_a_keyed_tls_server():
    assert set(snippets()) == {"curl", *SNIPPET_PYTHONS}


@pytest.mark.parametrize("name", ["curl", *SNIPPET_PYTHONS])
def test_each_snippet_of_the_security_page_runs_against_a_keyed_tls_server(secured, demo_model, tmp_path, name):
    language, code = snippets()[name]
    code = code.replace("8501", str(secured.servers.shim_port)).replace("8500", str(secured.servers.grpc_port))
    (tmp_path / "ca.pem").write_bytes(secured.trusted.read_bytes())
    (tmp_path / "api-key.txt").write_text(KEYS["pipeline-b"] + "\n")
    shutil.copytree(demo_model / "samples", tmp_path / "build" / "demo" / "samples")
    if language == "bash":
        command = ["bash", "-c", code]
    else:
        venv = SNIPPET_PYTHONS[name]
        python = (venv if venv.is_absolute() else PROJECT_ROOT / venv) / "bin" / "python"
        command = [str(python), "-c", code]
    ran = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    if language == "bash":
        probabilities = json.loads(ran.stdout)["predictions"][0]
        assert probabilities.index(max(probabilities)) == 3
    else:
        assert set(ran.stdout.split()) == {"3"}, ran.stdout


def test_a_certificate_replaced_on_disk_reaches_new_connections_while_requests_in_flight_finish(secured, image):
    renewed = Authority(secured.folder / "renewed-ca", "renewed CA")
    secured.trusted.write_bytes(secured.authority.cert.read_bytes() + renewed.cert.read_bytes())  # clients trust both
    statuses: list[object] = []
    sent_again: list[Exception] = []  # REST requests on a kept-alive connection the reload closed unread
    stop = threading.Event()

    def rest_predict(session: requests.Session) -> object:
        """One REST prediction's status. A kept-alive connection that nginx's reload closed before reading a
        request on it is a ConnectionError: sent again once, on a new connection, as HTTP clients do (inference
        is idempotent). What nginx read is answered; what it had not read is the client's to send again."""

        def post() -> int:
            return session.post(secured.rest + "/v1/models/digits:predict", json=tf_body(image), timeout=60).status_code

        try:
            return post()
        except requests.ConnectionError as error:
            sent_again.append(error)
        try:
            return post()
        except requests.RequestException as error:
            return type(error).__name__

    def load() -> None:
        session = secured.session("pipeline-a")
        with secured.channel() as channel:  # one connection, opened before the rotation, through it
            while not stop.is_set():
                statuses.append(rest_predict(session))
                statuses.append(grpc_code(channel, "tfserving", image, metadata("pipeline-a")))

    def only_trusting(authority: Authority) -> tuple[bool, bool]:
        """Whether a new connection trusting `authority` alone is served on (REST, gRPC)."""
        try:
            rest = requests.get(secured.rest + "/ready", verify=str(authority.cert), timeout=10).status_code == 200
        except requests.exceptions.SSLError:
            rest = False
        credentials = grpc.ssl_channel_credentials(authority.cert.read_bytes())
        with grpc.secure_channel(secured.grpc_address, credentials) as channel:
            on_grpc = grpc_code(channel, "tfserving", image, metadata("pipeline-a")) == "OK"
        return rest, on_grpc

    assert only_trusting(secured.authority) == (True, True)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(load)
        wait_for(lambda: len(statuses) >= 4, "the load under way")
        pair = renewed.issue("server")
        replace(pair.key, secured.key)
        replace(pair.cert, secured.cert)
        wait_for(lambda: only_trusting(renewed) == (True, True), "new connections getting the new certificate")
        assert only_trusting(secured.authority) == (False, False)
        count = len(statuses)
        wait_for(lambda: len(statuses) >= count + 4, "the load still answered")
        stop.set()
        running.result()
    assert set(statuses) <= {200, "OK"}, statuses
    assert len(sent_again) <= 1, sent_again  # one reload: at most the one kept-alive connection it closed
    assert "serve: TLS: the certificate files changed" in (secured.servers.log_dir / "serve.out").read_text()


# --- What is counted and what is logged -----------------------------------------------------------------


def test_refused_calls_show_in_metrics_by_reason_with_no_key_and_no_made_up_model_as_a_label(secured, image):
    session = secured.session()
    session.post(secured.rest + "/v1/models/made-up-model:predict", json=tf_body(image), timeout=30,
                 headers={"Authorization": "Bearer made-up-key-0123456789"})  # fmt: skip
    with secured.channel() as channel:
        grpc_code(channel, "tfserving", image, metadata(None))
    text = secured.rest_get("/metrics").text
    for front in ("rest", "grpc"):
        for reason in ("missing_key", "wrong_key"):
            assert f'fastai_serving_refused_calls_total{{front="{front}",reason="{reason}"}}' in text
    assert 'fastai_serving_calls_by_key_total{front="rest",key="pipeline-a"}' in text
    assert "made-up" not in text and not any(key in text for key in KEYS.values())


def test_no_key_token_or_certificate_path_appears_in_any_log_line(secured):
    logs = [path for path in secured.servers.log_dir.rglob("*") if path.is_file() and path.suffix in (".log", ".out")]
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert "serve: API keys: on" in text  # the logs read are the servers'
    paths = [secured.cert, secured.key, secured.keys_file, secured.authority.folder, secured.trusted]
    secrets = [*KEYS.values(), "d4" * 16, "made-up-key", *map(str, paths)]
    assert [secret for secret in secrets if secret in text] == []


# --- Client certificates --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mutual(tmp_path_factory, digits_store, secured):
    secured.stop()  # one TorchServe at a time on this machine's two cores
    server = Secured(tmp_path_factory.mktemp("mutual"), digits_store, client_ca=True).start()
    yield server
    server.stop(wait=False)


def test_with_a_client_ca_a_client_without_a_certificate_is_refused_at_the_handshake(mutual, image):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(mutual.rest + "/ready", verify=str(mutual.trusted), timeout=10)
    with mutual.channel(with_client_certificate=False) as channel:
        assert grpc_code(channel, "tfserving", image, metadata("pipeline-a")) == "UNAVAILABLE"


def test_with_a_client_ca_a_client_certificate_it_signed_is_served_and_still_needs_a_key(mutual, image):
    assert rest_status(mutual, "tfserving", image, "pipeline-a") == 200
    assert rest_status(mutual, "tfserving", image, None) == 401
    with mutual.channel() as channel:
        assert grpc_code(channel, "v2", image, metadata("pipeline-a")) == "OK"


def test_a_client_certificate_of_another_ca_is_refused_on_both_ports(mutual, image):
    stranger = Authority(mutual.folder / "stranger-ca", "stranger CA").issue("stranger", client=True)
    response = requests.get(mutual.rest + "/ready", verify=str(mutual.trusted), timeout=10,
                            cert=(str(stranger.cert), str(stranger.key)))  # fmt: skip
    assert response.status_code == 403 and "client certificate" in response.json()["error"]
    credentials = grpc.ssl_channel_credentials(mutual.trusted.read_bytes(), stranger.key.read_bytes(),
                                               stranger.cert.read_bytes())  # fmt: skip
    with grpc.secure_channel(mutual.grpc_address, credentials) as channel:
        assert grpc_code(channel, "tfserving", image, metadata("pipeline-a")) == "UNAVAILABLE"


def test_predict_batch_presents_its_client_certificate_on_both_protocols(mutual, demo_model, tmp_path):
    token = tmp_path / "api-key.txt"
    token.write_text(KEYS["ops"])
    for protocol, server in (("rest", mutual.rest), ("grpc", mutual.grpc_address)):
        done = subprocess.run([PREDICT_BATCH, str(demo_model / "samples"), "--server", server, "--protocol", protocol,
                               "--model", "digits", "--token-file", str(token), "--ca", str(mutual.trusted), "--cert",
                               str(mutual.client.cert), "--key", str(mutual.client.key),
                               "--out", str(tmp_path / f"{protocol}.jsonl")],
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_loopback_metrics_answer_a_client_on_this_machine_through_nginx(mutual):
    """nginx tells the shim the client's address (the shim's own peer is nginx, on a unix socket)."""
    response = mutual.rest_get("/metrics")
    assert response.status_code == 200 and "fastai_serving_requests_total" in response.text
