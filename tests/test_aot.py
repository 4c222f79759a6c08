"""Archives compiled ahead of time (make-archive --compile aot): answer as eager, load without compiling, fall back.

Each AOT build takes a minute or more on two busy cores, so every archive here is built once for
the module, by make-archive's own code in this process (its check against eager runs in each
build, and a build that fails it is refused), and one TorchServe
serves all four vision kinds, plus a copy of the classifier's archive whose record names
another CPU.
"""

from __future__ import annotations

import base64
import functools
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import torch
import yaml

from fastai_serving.compiled.aot import (
    AOT_DIR_IN_ARCHIVE,
    BF16_AGREEMENT,
    BF16_REGRESSION_TOLERANCE,
    BUILT_FOR_FILE,
    FP32_TOLERANCE,
    build_package,
    decision_agreement,
    load_package,
    this_machine,
)
from fastai_serving.engine.learner import BF16, load_learner
from fastai_serving.engine.predict import decode_images, predict_images
from harness.learners import make_regressor_in_the_tens
from harness.servers import Servers, archive_here

# Four AOT builds, a minute each on a quiet machine and several on a loaded one, share the first test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

MAX_BATCH = 2  # batches of 1 and 2 images from one package, and a tail of 1
KINDS = ["classifier", "multilabel", "regressor", "segmenter"]
ELSEWHERE = "classifier_elsewhere"  # the classifier's archive, its record edited to another CPU kind


def images_of(export_path: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((export_path.parent / "images").glob("*.png"))[:5]]


def eager_predictions(export_path: Path, images: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager model's outputs (probabilities, scores, values) and decoded answers (a segmenter's mask)."""
    served = load_learner(export_path)
    predictions = predict_images(served, decode_images(images, [f"image {i}" for i in range(len(images))]), MAX_BATCH)
    return torch.stack([p.output for p in predictions]), torch.stack([p.decoded for p in predictions])


def eager_outputs(export_path: Path, images: list[bytes]) -> torch.Tensor:
    return eager_predictions(export_path, images)[0]


def assert_answers_as_eager(kind: str, answered: torch.Tensor, outputs: torch.Tensor, masks: torch.Tensor) -> None:
    """Within 1e-4 of eager's outputs; a segmenter answers its mask: equal to eager's on every pixel whose two
    most likely classes are more than 1e-3 apart (an untrained unet has near-ties a 1e-6 difference can flip)."""
    if kind != "segmenter":
        assert (answered - outputs).abs().max() < 1e-4
        return
    top = outputs.float().topk(2, dim=1).values
    clear = (top[:, 0] - top[:, 1]) > 1e-3
    assert clear.float().mean() > 0.5  # most pixels are compared
    assert torch.equal(answered[clear], masks.float()[clear])


def with_record_edited(archive: Path, name: str, **changes: str) -> None:
    """A copy of `archive` as model `name`, its recorded machine kind with `changes` (as if built elsewhere)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(archive.with_name(f"{name}.mar"), "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == f"{AOT_DIR_IN_ARCHIVE}/{BUILT_FOR_FILE}":
                data = json.dumps(json.loads(data) | changes).encode()
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            target.writestr(item, data)


@pytest.fixture(scope="module")
def aot_store(tmp_path_factory, small_learners) -> Path:
    store = tmp_path_factory.mktemp("aot-store")
    for kind in KINDS:  # in this process (no deadline: a loaded machine builds slowly); refusing raises SystemExit
        archive_here(kind, small_learners[kind], store, "--compile", "aot", "--max-batch", str(MAX_BATCH))
    with_record_edited(store / "classifier.mar", ELSEWHERE, cpu_capability="ANOTHER_ISA")
    return store


@pytest.fixture(scope="module")
def aot_servers(tmp_path_factory, aot_store):
    """The AOT archives served, with an empty inductor cache: anything a worker compiled would land there."""
    cache = tmp_path_factory.mktemp("aot-worker-cache")
    servers = Servers(model_store=aot_store, log_dir=tmp_path_factory.mktemp("aot-logs"))
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        servers.start([*KINDS, ELSEWHERE], timeout_s=600)
    servers.inductor_cache = cache
    yield servers
    servers.stop(wait=False)


def described(servers: Servers, model: str) -> dict:
    return requests.get(f"{servers.shim}/v1/models/{model}/metadata", timeout=60).json()["metadata"]["fastai"]


def predicted(servers: Servers, model: str, images: list[bytes]) -> torch.Tensor:
    body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
    answer = requests.post(f"{servers.shim}/v1/models/{model}:predict", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return torch.tensor(answer.json()["predictions"], dtype=torch.float32)


def test_an_aot_archive_holds_its_package_and_the_machine_kind_it_was_built_for(aot_store):
    with zipfile.ZipFile(aot_store / "classifier.mar") as archive:
        names = set(archive.namelist())
        record = json.loads(archive.read(f"{AOT_DIR_IN_ARCHIVE}/{BUILT_FOR_FILE}"))
        settings = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
    assert f"{AOT_DIR_IN_ARCHIVE}/model.pt2" in names
    assert record == this_machine(torch.device("cpu"), "fp32").describe()
    assert settings["aot_dir"] == AOT_DIR_IN_ARCHIVE and settings["compile"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_every_vision_kind_served_from_its_package_answers_as_eager(aot_servers, small_learners, kind):
    images = images_of(small_learners[kind])  # five: two full batches and a tail
    outputs, masks = eager_predictions(small_learners[kind], images)
    report = described(aot_servers, kind)
    assert report["compiled"] is True and report["compile"]["mode"] == "aot", report
    for count in (1, 2, 5):
        assert_answers_as_eager(kind, predicted(aot_servers, kind, images[:count]), outputs[:count], masks[:count])


def test_workers_load_the_package_without_compiling(aot_servers):
    log = aot_servers.model_log()
    assert log.count("loaded the AOT package") == len(KINDS)
    assert "compiled the model" not in log  # the in-worker mode's line
    assert all(described(aot_servers, kind)["compiled_graphs"] == 0 for kind in KINDS)  # dynamo ran nothing
    assert not any(aot_servers.inductor_cache.iterdir())  # inductor wrote nothing: it compiled nothing


def test_a_package_built_for_another_cpu_is_served_eager_and_says_so(aot_servers, small_learners):
    report = described(aot_servers, ELSEWHERE)
    assert report["compiled"] is False and report["compile"]["mode"] == "eager"
    assert report["compile"]["built_for"]["cpu_capability"] == "ANOTHER_ISA"
    assert "cpu_capability 'ANOTHER_ISA'" in report["compile"]["fallback"]
    assert "serves the model eager: the package was built for another machine" in aot_servers.model_log()
    images = images_of(small_learners["classifier"])
    eager = eager_outputs(small_learners["classifier"], images)
    assert (predicted(aot_servers, ELSEWHERE, images) - eager).abs().max() < 1e-5


def served_in_bf16(export_path: Path):
    """The Learner served in bfloat16 autocast, as on a machine with fast bfloat16 (AVX512-BF16, AMX, a GPU).

    The precision is set after loading, so the test runs bf16 on any CPU: where it lacks fast bfloat16
    (load_learner would serve fp32 there), autocast runs bf16 in software, slower and to the same numbers."""
    served = load_learner(export_path)
    served.precision = BF16
    return served


@pytest.fixture(scope="module")
def bf16_package(tmp_path_factory, small_learners) -> Callable[[str], Path]:
    """A kind's package built from its Learner served in bf16 (checked against eager bf16), built once: its folder."""

    @functools.cache
    def built(kind: str) -> Path:
        folder = tmp_path_factory.mktemp(f"bf16-{kind}")
        report = build_package(served_in_bf16(small_learners[kind]), MAX_BATCH, folder)
        assert report.compiled, report.error
        return folder

    return built


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_a_bf16_package_runs_bf16_and_decodes_as_eager_bf16_does(bf16_package, small_learners, kind):
    package = bf16_package(kind)
    assert json.loads((package / BUILT_FOR_FILE).read_text())["precision"] == BF16
    served = served_in_bf16(small_learners[kind])
    images = decode_images(images_of(small_learners[kind]), [f"image {i}" for i in range(5)])
    eager = predict_images(served, images, MAX_BATCH)
    loaded = load_package(served, package, MAX_BATCH)
    assert loaded.compiled and loaded.mode == "aot", loaded.error
    answered = predict_images(served, images, MAX_BATCH)
    if kind == "regressor":  # values: within bf16's rounding of eager bf16's
        difference = max((a.output - e.output).abs().max().item() for a, e in zip(answered, eager, strict=True))
        assert difference <= BF16_REGRESSION_TOLERANCE * max(1.0, max(e.output.abs().max().item() for e in eager))
    else:  # classes: the same wherever eager bf16 decides by more than bf16's rounding (near-ties are left out)
        agreement = decision_agreement(served, answered, eager)
        assert agreement is not None  # the classifier decides some of the five images clearly
        assert agreement >= BF16_AGREEMENT


def test_a_regression_of_values_in_the_tens_is_packaged_and_answers_as_eager_relative_to_its_size(tmp_path):
    export_path = make_regressor_in_the_tens(tmp_path / "learner")
    served = load_learner(export_path)
    built = build_package(served, MAX_BATCH, tmp_path / "aot")  # checked against eager: float rounding passes
    assert built.compiled, built.error
    images = decode_images(images_of(export_path), [f"image {i}" for i in range(5)])
    eager = torch.stack([p.output for p in predict_images(served, images, MAX_BATCH)])
    assert eager.min() >= 10  # values in the tens, where float rounding exceeds 1e-4 on some CPUs
    loaded = load_package(served, tmp_path / "aot", MAX_BATCH)
    assert loaded.compiled and loaded.mode == "aot", loaded.error
    answered = torch.stack([p.output for p in predict_images(served, images, MAX_BATCH)])
    assert ((answered - eager).abs() / eager.abs()).max() <= FP32_TOLERANCE


def test_a_bf16_package_on_a_worker_serving_fp32_is_served_eager(bf16_package, small_learners):
    """A bf16 archive on a CPU without fast bfloat16 serves fp32: its bf16 package is not run there."""
    served = load_learner(small_learners["classifier"])  # fp32: load_learner's default precision
    report = load_package(served, bf16_package("classifier"), MAX_BATCH)
    assert report.compiled is False and report.mode == "eager"
    assert "precision 'bf16' (here 'fp32')" in report.error
    assert not hasattr(served.learn.model, "package")  # the eager model is left in place


def test_make_archive_refuses_a_model_that_does_not_export_unless_told_to_fall_back(tmp_path, small_learners, capsys):
    flags = ["--compile", "aot"]
    with pytest.raises(SystemExit) as refused:
        archive_here("tabular", small_learners["tabular"], tmp_path, *flags)
    assert "does not compile" in str(refused.value) and "--compile-fallback" in str(refused.value)
    assert "runs eager" in str(refused.value)  # the reason: a tabular forward takes fastai's own batch
    assert not (tmp_path / "tabular.mar").exists()
    with zipfile.ZipFile(
        archive_here("tabular", small_learners["tabular"], tmp_path, *flags, "--compile-fallback")
    ) as archive:
        settings = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
        assert settings["aot_dir"] == "" and not any(name.startswith("aot/") for name in archive.namelist())
    assert "archiving it eager" in capsys.readouterr().out


def test_compile_alone_means_aot(tmp_path):
    from fastai_serving_scripts.make_archive import parse_args

    learner = ["--name", "m", "--learner", str(tmp_path / "export.pkl")]
    assert parse_args([*learner, "--compile"]).compile == "aot"
    assert parse_args([*learner, "--compile", "worker"]).compile == "worker"
    assert parse_args(learner).compile is None
