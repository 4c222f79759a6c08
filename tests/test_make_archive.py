"""scripts/make-archive: a .mar from an export.pkl, and clear errors for what cannot be served."""

from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from harness.learners import UTILS_DIR
from harness.servers import make_archive

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
    assert {"export.pkl", "torchserve_handler.py", "fastai_serving/batching.py", "model_utils/tile_utils.py"} <= names
    assert manifest["model"]["serializedFile"] == "export.pkl"
    assert config["batchSize"] == 4 and config["maxBatchDelay"] == 25
    assert config["handler"]["max_batch"] == 8 and config["handler"]["utils_dir"] == "model_utils"


def test_the_learners_file_name_is_kept(tmp_path, exported_learners):
    renamed = tmp_path / "my-model-v2.pkl"
    renamed.write_bytes(exported_learners["regressor"].read_bytes())
    assert make_archive("renamed", renamed, tmp_path / "store").returncode == 0
    with zipfile.ZipFile(tmp_path / "store" / "renamed.mar") as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "my-model-v2.pkl"


def test_a_missing_utils_module_is_named(tmp_path, exported_learners):
    result = make_archive("with_utils", exported_learners["with_utils"], tmp_path)
    assert result.returncode != 0
    assert "tile_utils" in result.stderr and "--utils" in result.stderr
    assert not (tmp_path / "with_utils.mar").exists()


def test_a_missing_learner_file_is_refused(tmp_path):
    result = make_archive("nothing", tmp_path / "export.pkl", tmp_path)
    assert result.returncode != 0
    assert "no such file" in result.stderr


def test_a_file_that_is_not_a_learner_is_refused(tmp_path):
    not_a_learner = tmp_path / "export.pkl"
    not_a_learner.write_bytes(b"just some bytes")
    result = make_archive("bogus", not_a_learner, tmp_path)
    assert result.returncode != 0
    assert "not an exported fastai Learner" in result.stderr


def test_an_existing_archive_is_kept_unless_forced(tmp_path, exported_learners):
    assert make_archive("regressor", exported_learners["regressor"], tmp_path).returncode == 0
    again = make_archive("regressor", exported_learners["regressor"], tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr
    assert make_archive("regressor", exported_learners["regressor"], tmp_path, "--force").returncode == 0


def test_a_model_name_unsafe_in_urls_is_refused(tmp_path, exported_learners):
    result = make_archive("../escape", exported_learners["regressor"], tmp_path)
    assert result.returncode != 0 and "--name" in result.stderr
