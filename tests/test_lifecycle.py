"""Model lifecycle: versions side by side, a reload under load with no failed request, a broken archive refused.

One server of their own serves three copies of the demo model, one per test ("swapped",
"sided", "guarded"), so that swapping one model's versions disturbs no other test.
"""

from __future__ import annotations

import base64
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from harness.load import expected_probabilities, run_checked_load
from harness.servers import ROOT, Servers, archive_here

pytestmark = pytest.mark.e2e

MODELS = ("swapped", "sided", "guarded")


def reload(servers: Servers, model: str, archive: Path, *flags: str) -> subprocess.CompletedProcess:
    """scripts/reload as a user runs it: no --model-store, the server's own store is found."""
    command = [
        str(ROOT / "scripts" / "reload"), "--name", model, "--archive", str(archive),
        "--management", servers.management, *flags,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def second_version(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Another digits Learner (other seed, fewer epochs: other probabilities) and, per model, its 2.0 archive."""
    from fastai_serving_scripts.demo import train_digits

    folder = tmp_path_factory.mktemp("digits-v2")
    export_path, _ = train_digits(folder / "learner", epochs=2, seed=1)
    archives = {}
    for model in MODELS:
        archive_here(model, export_path, folder / "archives", "--version", "2.0")
        archives[model] = folder / "archives" / f"{model}.mar"
    return export_path, archives


@pytest.fixture(scope="module")
def lifecycle_servers(tmp_path_factory, exported_learners):
    store = tmp_path_factory.mktemp("lifecycle-store")
    for model in MODELS:
        archive_here(model, exported_learners["digits"], store)
    servers = Servers(model_store=store, log_dir=tmp_path_factory.mktemp("lifecycle-logs")).start(list(MODELS))
    yield servers
    servers.stop(wait=False)


def test_reload_under_load_fails_no_request_and_ends_on_the_new_version(
    lifecycle_servers, demo_model, loaded_learners, second_version
):
    from fastai_serving.engine.learner import load_learner

    images = [path.read_bytes() for path in sorted((demo_model / "images").rglob("*.png"))[:40]]
    old = expected_probabilities(loaded_learners["digits"], images)
    new = expected_probabilities(load_learner(second_version[0]), images)
    assert old != new
    url = f"{lifecycle_servers.shim}/v1/models/swapped:predict"
    during, swapped = {}, threading.Event()
    load = threading.Thread(
        target=lambda: during.setdefault(
            "result",
            run_checked_load(
                url, images, old, clients=6, max_instances=16, duration_s=240, also_expected=new, until=swapped
            ),
        )
    )
    load.start()
    swap = reload(lifecycle_servers, "swapped", second_version[1]["swapped"], "--drain", "5")
    swapped.set()  # the load ran before, through and after the swap; it stops now
    load.join(timeout=300)
    assert swap.returncode == 0, swap.stderr
    result = during["result"]
    assert result.errors == {} and result.failures == [], (result.errors, result.failures[:3])
    assert result.mismatches == []
    assert "expected" in result.answered_by and "also_expected" in result.answered_by  # the swap happened mid-load
    after = run_checked_load(url, images, new, clients=4, max_instances=16, requests_per_client=5)
    assert after.errors == {} and after.mismatches == []
    status = requests.get(f"{lifecycle_servers.shim}/v1/models/swapped", timeout=5).json()
    assert [s["version"] for s in status["model_version_status"]] == ["2"]
    store = lifecycle_servers.model_store  # the server's own store, found without --model-store
    assert (store / "swapped-v2.0.mar").is_file() and not (store / "swapped.mar").exists()
    assert (store / ".retired" / "swapped.mar").is_file()  # where TorchServe never loads it (hidden)


def test_versions_side_by_side_each_reachable(lifecycle_servers, demo_model, loaded_learners, second_version):
    from fastai_serving.engine.learner import load_learner

    swap = reload(lifecycle_servers, "sided", second_version[1]["sided"], "--keep-old")
    assert swap.returncode == 0, swap.stderr
    image = (demo_model / "samples" / "4.png").read_bytes()
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    old = expected_probabilities(loaded_learners["digits"], [image])[0]
    new = expected_probabilities(load_learner(second_version[0]), [image])[0]
    shim = lifecycle_servers.shim
    for path, expected in [("/versions/1", old), ("/versions/2", new), ("", new)]:
        answer = requests.post(f"{shim}/v1/models/sided{path}:predict", json=body, timeout=60).json()["predictions"][0]
        assert answer == pytest.approx(expected, abs=1e-4), path
    status = requests.get(f"{shim}/v1/models/sided", timeout=5).json()
    assert sorted(s["version"] for s in status["model_version_status"]) == ["1", "2"]
    metadata = requests.get(f"{shim}/v1/models/sided/versions/2/metadata", timeout=60).json()
    assert metadata["model_spec"]["version"] == "2"
    config = requests.get(f"{lifecycle_servers.management}/models/sided/2.0", timeout=5).json()[0]
    assert config["batchSize"] == 16 and config["maxBatchDelay"] == 10  # the archive's own settings


def test_a_broken_archive_is_refused_and_the_old_version_keeps_serving(
    lifecycle_servers, demo_model, tmp_path, second_version
):
    broken = tmp_path / "broken.mar"
    with zipfile.ZipFile(second_version[1]["guarded"]) as good, zipfile.ZipFile(broken, "w") as bad:
        for item in good.infolist():
            data = good.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":
                data = data.replace(b'"modelVersion": "2.0"', b'"modelVersion": "3.0"')
            bad.writestr(item, b"not a pickle any more" if item.filename == "export.pkl" else data)
    swap = reload(lifecycle_servers, "guarded", broken, "--ready-timeout", "15")
    assert swap.returncode == 1
    assert "had no ready worker" in swap.stderr and "1.0 keeps serving" in swap.stderr
    image = (demo_model / "samples" / "6.png").read_bytes()
    answer = requests.post(
        f"{lifecycle_servers.shim}/v1/models/guarded:predict",
        json={"image_bytes": base64.b64encode(image).decode()},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["prediction"] == "6"
    versions = requests.get(f"{lifecycle_servers.management}/models/guarded/all", timeout=5).json()
    assert [v["modelVersion"] for v in versions] == ["1.0"]
    assert not (lifecycle_servers.model_store / "guarded-v3.0.mar").exists()


def test_reload_into_a_folder_the_server_does_not_serve_is_refused(lifecycle_servers, second_version, tmp_path):
    swap = reload(lifecycle_servers, "guarded", second_version[1]["guarded"], "--model-store", str(tmp_path))
    assert swap.returncode == 1
    assert f"serves the model store {lifecycle_servers.model_store}, not {tmp_path}" in swap.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_restart_after_a_reload_serves_the_new_version_and_nothing_retired(lifecycle_servers):
    """After the first test's reload of "swapped": stop, start again on the same store (load_models=all)."""
    store = lifecycle_servers.model_store
    assert (store / ".retired" / "swapped.mar").is_file()
    lifecycle_servers.stop()
    restarted = Servers(model_store=store, log_dir=lifecycle_servers.log_dir / "restart")
    restarted.start(list(MODELS))
    try:
        models = requests.get(f"{restarted.shim}/v1/models", timeout=5).json()["models"]
        assert sorted(models) == sorted(MODELS)  # no model made of the retired archives
        ready = requests.get(f"{restarted.shim}/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["models"] == dict.fromkeys(MODELS, True)
        status = requests.get(f"{restarted.shim}/v1/models/swapped", timeout=5).json()
        assert [s["version"] for s in status["model_version_status"]] == ["2"]
    finally:
        restarted.stop()
