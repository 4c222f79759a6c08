"""Model lifecycle: versions side by side, a reload under load with no failed request, a broken archive refused.

These run their own servers (one model, "digits") so that swapping versions disturbs no other test.
"""

from __future__ import annotations

import base64
import io
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from conftest import ROOT, make_archive
from load import expected_probabilities, run_checked_load
from servers import Servers


def reload(servers: Servers, archive: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        str(ROOT / "scripts" / "reload"), "--name", "digits", "--archive", str(archive),
        "--model-store", str(servers.model_store), "--management", servers.management, *flags,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def second_version(tmp_path_factory) -> tuple[Path, Path]:
    """Another digits Learner (other seed, fewer epochs: other probabilities) and its 2.0 archive."""
    from demo_model import train_digits

    folder = tmp_path_factory.mktemp("digits-v2")
    export_path, _ = train_digits(folder / "learner", epochs=2, seed=1)
    assert make_archive("digits", export_path, folder / "archive", "--version", "2.0").returncode == 0
    return export_path, folder / "archive" / "digits.mar"


@pytest.fixture()
def digits_servers(tmp_path, exported_learners):
    store = tmp_path / "store"
    assert make_archive("digits", exported_learners["digits"], store).returncode == 0
    servers = Servers(model_store=store, log_dir=tmp_path / "logs", default_model="digits").start(["digits"])
    yield servers
    servers.stop()


def test_reload_under_load_fails_no_request_and_ends_on_the_new_version(
    digits_servers, demo_model, loaded_learners, second_version
):
    from fastai_serving.learner import load_learner

    images = [path.read_bytes() for path in sorted((demo_model / "images").rglob("*.png"))[:40]]
    old = expected_probabilities(loaded_learners["digits"], images)
    new = expected_probabilities(load_learner(second_version[0]), images)
    assert old != new
    url = f"{digits_servers.shim}/v1/models/digits:predict"
    during = {}
    load = threading.Thread(
        target=lambda: during.setdefault(
            "result", run_checked_load(url, images, old, clients=6, max_instances=16, duration_s=40, also_expected=new)
        )
    )
    load.start()
    swap = reload(digits_servers, second_version[1], "--drain", "5")
    load.join(timeout=300)
    assert swap.returncode == 0, swap.stderr
    result = during["result"]
    assert result.errors == {} and result.failures == [], (result.errors, result.failures[:3])
    assert result.mismatches == []
    assert "expected" in result.answered_by and "also_expected" in result.answered_by  # the swap happened mid-load
    after = run_checked_load(url, images, new, clients=4, max_instances=16, requests_per_client=5)
    assert after.errors == {} and after.mismatches == []
    status = requests.get(f"{digits_servers.shim}/v1/models/digits", timeout=5).json()
    assert [s["version"] for s in status["model_version_status"]] == ["2"]
    assert sorted(p.name for p in digits_servers.model_store.glob("*.mar")) == ["digits-v2.0.mar"]
    assert (digits_servers.model_store / "retired" / "digits.mar").is_file()


def test_versions_side_by_side_each_reachable(digits_servers, demo_model, loaded_learners, second_version):
    from fastai_serving.learner import load_learner

    swap = reload(digits_servers, second_version[1], "--keep-old")
    assert swap.returncode == 0, swap.stderr
    image = (demo_model / "samples" / "4.png").read_bytes()
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    old = expected_probabilities(loaded_learners["digits"], [image])[0]
    new = expected_probabilities(load_learner(second_version[0]), [image])[0]
    shim = digits_servers.shim
    for path, expected in [("/versions/1", old), ("/versions/2", new), ("", new)]:
        answer = requests.post(f"{shim}/v1/models/digits{path}:predict", json=body, timeout=60).json()["predictions"][0]
        assert answer == pytest.approx(expected, abs=1e-4), path
    status = requests.get(f"{shim}/v1/models/digits", timeout=5).json()
    assert sorted(s["version"] for s in status["model_version_status"]) == ["1", "2"]
    metadata = requests.get(f"{shim}/v1/models/digits/versions/2/metadata", timeout=60).json()
    assert metadata["model_spec"]["version"] == "2"
    config = requests.get(f"{digits_servers.management}/models/digits/2.0", timeout=5).json()[0]
    assert config["batchSize"] == 16 and config["maxBatchDelay"] == 10  # the archive's own settings


def test_a_broken_archive_is_refused_and_the_old_version_keeps_serving(digits_servers, demo_model, tmp_path, second_version):
    broken = tmp_path / "broken.mar"
    with zipfile.ZipFile(second_version[1]) as good, zipfile.ZipFile(broken, "w") as bad:
        for item in good.infolist():
            data = good.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":
                data = data.replace(b'"modelVersion": "2.0"', b'"modelVersion": "3.0"')
            bad.writestr(item, b"not a pickle any more" if item.filename == "export.pkl" else data)
    swap = reload(digits_servers, broken, "--ready-timeout", "40")
    assert swap.returncode == 1
    assert "had no ready worker" in swap.stderr and "1.0 keeps serving" in swap.stderr
    image = io.BytesIO((demo_model / "samples" / "6.png").read_bytes()).getvalue()
    answer = requests.post(
        f"{digits_servers.shim}/analyze:predict", json={"image_bytes": base64.b64encode(image).decode()}, timeout=60
    )
    assert answer.status_code == 200 and answer.json()["prediction"] == "6"
    versions = requests.get(f"{digits_servers.management}/models/digits/all", timeout=5).json()
    assert [v["modelVersion"] for v in versions] == ["1.0"]
    assert not (digits_servers.model_store / "digits-v3.0.mar").exists()
