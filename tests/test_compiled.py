"""The compiled fast path (make-archive --compile): answers as eager, never a compile on a request, a clean fallback.

Compiling takes tens of seconds per model on two cores, so these are end-to-end tests; every
compile of the session shares one inductor cache (conftest.py), as a machine's workers do.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import zipfile
from contextlib import redirect_stdout

import pytest
import requests
import torch
import yaml

from fastai_serving.compiled.worker import batch_sizes, compile_learner, compiled_graphs, split_fastai_cast
from fastai_serving.engine.learner import load_learner
from fastai_serving.engine.predict import decode_images, predict_images
from harness import learners
from harness.servers import Servers, archive_here
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

MAX_BATCH = 2  # batches of 1 and 2 images: two graphs a model, and a tail batch padded


def images_of(export_path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((export_path.parent / "images").glob("*.png"))[:5]]


def outputs(served, images: list[bytes]) -> torch.Tensor:
    decoded = decode_images(images, [f"image {i}" for i in range(len(images))])
    return torch.stack([prediction.output for prediction in predict_images(served, decoded, MAX_BATCH)])


@pytest.fixture(scope="module")
def uncompilable(tmp_path_factory):
    return learners.make_uncompilable(tmp_path_factory.mktemp("uncompilable"))


@pytest.mark.parametrize("kind", ["classifier", "multilabel", "regressor"])
def test_a_compiled_learner_answers_as_eager_and_compiles_nothing_after_its_warm_up(small_learners, kind):
    images = images_of(small_learners[kind])  # five: two full batches and one padded
    eager = outputs(load_learner(small_learners[kind]), images)
    served = load_learner(small_learners[kind])
    report = compile_learner(served, MAX_BATCH)
    assert report.compiled and report.batch_sizes == (1, 2), report.error
    graphs = compiled_graphs()
    compiled = outputs(served, images)
    assert compiled_graphs() == graphs  # every batch size was warmed: no request compiles
    assert (compiled - eager).abs().max() < 1e-5


def test_a_unet_segmenter_compiles_with_its_fastai_cast_left_outside_the_graph(small_learners):
    images = images_of(small_learners["segmenter"])
    eager = outputs(load_learner(small_learners["segmenter"]), images)
    served = load_learner(small_learners["segmenter"])
    report = compile_learner(served, MAX_BATCH)
    assert report.compiled, report.error
    graphs = compiled_graphs()
    assert (outputs(served, images) - eager).abs().max() < 1e-5  # per-pixel probabilities
    assert compiled_graphs() == graphs


def test_leaving_the_fastai_cast_out_shares_the_models_parameters_and_keeps_its_layers():
    from fastai.vision.all import DynamicUnet, create_body, resnet18

    unet = DynamicUnet(create_body(resnet18(), pretrained=False), n_out=2, img_size=(32, 32)).eval()
    body, tail = split_fastai_cast(unet)
    assert type(tail).__name__ == "ToTensorBase" and len(body.layers) == len(unet.layers) - 1
    assert type(unet.layers[-1]).__name__ == "ToTensorBase"  # the served model is untouched
    assert {id(p) for p in body.parameters()} == {id(p) for p in unet.parameters()}
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tail(body(batch)), unet(batch))


def test_a_model_that_does_not_compile_stays_eager_and_says_why(uncompilable):
    served = load_learner(uncompilable, utils_dir=learners.UTILS_DIR)
    eager = outputs(served, images_of(uncompilable))
    served.compile_report = compile_learner(served, MAX_BATCH)
    described = served.describe()
    assert not served.compile_report.compiled and described["compiled"] is False
    assert described["compile_error"].startswith(("RecursionError", "BackendCompilerFailed"))  # torch's own words
    assert torch.equal(outputs(served, images_of(uncompilable)), eager)


def test_make_archive_refuses_a_model_that_does_not_compile_unless_told_to_fall_back(uncompilable, tmp_path, capsys):
    flags = ["--utils", str(learners.UTILS_DIR), "--compile", "worker", "--max-batch", str(MAX_BATCH)]
    with pytest.raises(SystemExit) as refused:
        archive_here("uncompilable", uncompilable, tmp_path, *flags)
    assert "does not compile" in str(refused.value) and "--compile-fallback" in str(refused.value)
    assert not (tmp_path / "uncompilable.mar").exists()
    with zipfile.ZipFile(archive_here("uncompilable", uncompilable, tmp_path, *flags, "--compile-fallback")) as archive:
        assert yaml.safe_load(archive.read("model-config.yaml"))["handler"]["compile"] is False
    assert "archiving it eager" in capsys.readouterr().out


@pytest.fixture(scope="module")
def compiled_servers(tmp_path_factory, small_learners):
    store, said = tmp_path_factory.mktemp("compiled-store"), io.StringIO()
    with redirect_stdout(said):
        archive_here(
            "compiled", small_learners["classifier"], store, "--compile", "worker", "--max-batch", str(MAX_BATCH)
        )
    assert "it compiles" in said.getvalue()
    servers = Servers(model_store=store, log_dir=tmp_path_factory.mktemp("compiled-logs")).start(["compiled"])
    yield servers
    servers.stop(wait=False)


def described(servers: Servers) -> dict:
    return requests.get(f"{servers.shim}/v1/models/compiled/metadata", timeout=60).json()["metadata"]["fastai"]


def worker_pid(servers: Servers) -> int:
    (version,) = requests.get(f"{servers.management}/models/compiled", timeout=10).json()
    return int(version["workers"][0]["pid"])


def test_a_compiled_archive_serves_eager_answers_and_never_compiles_on_a_request(compiled_servers, small_learners):
    before = described(compiled_servers)
    assert before["compiled"] is True and before["compiled_batch_sizes"] == list(batch_sizes(MAX_BATCH))
    images = images_of(small_learners["classifier"])
    eager = outputs(load_learner(small_learners["classifier"]), images)
    for count in (1, 2, 3, 5):  # every size, whole batches and padded tails
        body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images[:count]]}
        answer = requests.post(f"{compiled_servers.shim}/v1/models/compiled:predict", json=body, timeout=60)
        assert answer.status_code == 200
        assert torch.tensor(answer.json()["predictions"]).sub(eager[:count]).abs().max() < 1e-5
    assert described(compiled_servers)["compiled_graphs"] == before["compiled_graphs"]


def test_a_restarted_worker_compiles_again_before_it_is_ready(compiled_servers):
    first = worker_pid(compiled_servers)
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: compiled_servers.ready("compiled") and worker_pid(compiled_servers) != first,
        "a compiled worker back after the kill",
        timeout_s=300,
        every_s=1,
    )
    again = described(compiled_servers)
    assert again["compiled"] is True and again["compiled_batch_sizes"] == list(batch_sizes(MAX_BATCH))
