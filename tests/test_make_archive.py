"""scripts/make-archive: a .mar from an export.pkl, and clear errors for what cannot be served.

The command itself runs where what it prints and its exit status are the point, or where this process could
hide a refusal (a module the worker imported already); elsewhere its own code runs here (`archive_here`: fastai is
imported once, not per archive), a refusal being the SystemExit whose message the command prints."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

from fastai_serving.engine.fastai_v1 import fastai_v1_names
from harness.fastai_v1_export import make_fastai_v1_export
from harness.learners import UTILS_DIR, make_language_model, make_tensor_learner
from harness.servers import archive_here, make_archive

pytestmark = pytest.mark.e2e


def test_archive_holds_the_learner_the_handler_and_its_settings(tmp_path, exported_learners):
    result = make_archive(
        "with_utils",
        exported_learners["with_utils"],
        tmp_path,
        "--utils",
        str(UTILS_DIR),
        "--batch-size",
        "4",
        "--max-batch-delay",
        "25",
        "--max-batch",
        "8",
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "with_utils.mar") as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert {
        "export.pkl",
        "torchserve_handler.py",
        "fastai_serving/engine/batching.py",
        "model_utils/tile_utils.py",
    } <= names
    assert manifest["model"]["serializedFile"] == "export.pkl"
    assert config["batchSize"] == 4 and config["maxBatchDelay"] == 25
    assert config["handler"]["max_batch"] == 8 and config["handler"]["utils_dir"] == "model_utils"


def test_the_learners_file_name_is_kept(tmp_path, exported_learners):
    renamed = tmp_path / "my-model-v2.pkl"
    renamed.write_bytes(exported_learners["regressor"].read_bytes())
    with zipfile.ZipFile(archive_here("renamed", renamed, tmp_path / "store")) as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "my-model-v2.pkl"


def test_a_folder_named_as_the_model_in_the_temp_folder_is_left_alone(tmp_path, exported_learners):
    """torch-model-archiver stages in TMPDIR/<model name>, deleting what is there: make-archive gives it a temp
    folder of its own, so a user's folder (or another make-archive of the same name, at the same moment) is kept."""
    name = f"kept-{tmp_path.name}"
    users_folder = Path(tempfile.gettempdir()) / name
    users_folder.mkdir()
    try:
        (users_folder / "notes.txt").write_text("mine")
        assert archive_here(name, exported_learners["regressor"], tmp_path / "store").exists()
        assert (users_folder / "notes.txt").read_text() == "mine"
    finally:
        shutil.rmtree(users_folder)


def test_a_missing_utils_module_is_named(tmp_path, exported_learners):
    # The command: this process may have imported tile_utils already, loading the Learner with its --utils.
    result = make_archive("with_utils", exported_learners["with_utils"], tmp_path)
    assert result.returncode != 0
    assert "tile_utils" in result.stderr and "--utils" in result.stderr
    assert not (tmp_path / "with_utils.mar").exists()


def test_a_fastai_1x_export_is_refused_saying_what_it_is_and_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as refused:
        archive_here("old", make_fastai_v1_export(tmp_path / "v1"), tmp_path)
    said = str(refused.value)
    assert said.startswith("make-archive: export.pkl was exported by fastai 1.x (it holds fastai.layers.FlattenedLoss")
    assert "re-create the Learner in fastai 2" in said and "--utils" not in said
    assert not (tmp_path / "old.mar").exists()


def test_no_fastai_2_export_is_taken_for_a_fastai_1x_one(exported_learners):
    assert {name: fastai_v1_names(exported_learners[name]) for name in exported_learners} == {
        name: [] for name in exported_learners
    }


def test_a_missing_learner_file_is_refused(tmp_path):
    result = make_archive("nothing", tmp_path / "export.pkl", tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"make-archive: --learner {tmp_path / 'export.pkl'}: no such file\n"


def test_a_file_that_is_not_a_learner_is_refused(tmp_path):
    not_a_learner = tmp_path / "export.pkl"
    not_a_learner.write_bytes(b"just some bytes")
    with pytest.raises(SystemExit, match="not an exported fastai Learner"):
        archive_here("bogus", not_a_learner, tmp_path)


def test_an_existing_archive_is_kept_unless_forced(tmp_path, exported_learners):
    written = archive_here("regressor", exported_learners["regressor"], tmp_path)
    first = written.stat().st_mtime_ns
    with pytest.raises(SystemExit, match="exists; pass --force to overwrite it"):
        archive_here("regressor", exported_learners["regressor"], tmp_path)
    assert written.stat().st_mtime_ns == first
    assert archive_here("regressor", exported_learners["regressor"], tmp_path, "--force").stat().st_mtime_ns != first


def test_a_model_name_unsafe_in_urls_is_refused(tmp_path, exported_learners):
    with pytest.raises(SystemExit, match="--name '../escape': use letters"):
        archive_here("../escape", exported_learners["regressor"], tmp_path)


KINDS = {
    "digits": "vision", "segmenter": "vision", "tabular": "tabular", "tabular_multilabel": "tabular",
    "tabular_regressor": "tabular", "tabular_multi_regressor": "tabular", "text": "text",
    "text_multilabel": "text", "collab": "collab",
}  # fmt: skip


@pytest.mark.parametrize("name", list(KINDS))
def test_every_archive_records_its_learners_kind(model_store, name):
    with zipfile.ZipFile(model_store / f"{name}.mar") as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert config["handler"]["kind"] == KINDS[name]
    assert config["handler"]["max_text_chars"] == 10_000 and config["handler"]["max_row_batch"] == 1024


def test_make_archive_says_the_kind_and_task_it_found(tmp_path, exported_learners, capsys):
    archive_here("prices", exported_learners["tabular_multi_regressor"], tmp_path)
    assert "make-archive: export.pkl: tabular regression, target(s) price, volume\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    "build, found",
    [
        (make_language_model, "a text Learner whose model is a SequentialRNN without a SentenceEncoder, such as a "
                              "language model (language_model_learner)"),
        (make_tensor_learner, "a Learner whose inputs are read by ItemGetter into a Linear"),
    ],
)  # fmt: skip
def test_a_learner_of_another_kind_is_refused_naming_what_was_found(tmp_path, build, found):
    with pytest.raises(SystemExit) as refused:
        archive_here("other", build(tmp_path / "learner"), tmp_path)
    assert found in str(refused.value) and "fastai-serving serves" in str(refused.value)
    assert not (tmp_path / "other.mar").exists()
