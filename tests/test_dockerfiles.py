"""The Dockerfiles pass hadolint and build from what the repository holds.

Building and running the image is `make image-check` (minutes, a Docker engine), not a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastai_serving_scripts import healthcheck as healthcheck_module
from harness import PROJECT_ROOT

DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(PROJECT_ROOT / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_optional_folder_args_default_to_folders_in_the_repository(dockerfile):
    """COPY needs a source that exists, so UTILS_DIR and EXTRA_CA_CERTS default to an empty folder."""
    defaults = dict(
        re.findall(r"^ARG (UTILS_DIR|EXTRA_CA_CERTS)=(\S+)$", (PROJECT_ROOT / dockerfile).read_text(), re.M)
    )
    assert set(defaults) == {"UTILS_DIR", "EXTRA_CA_CERTS"}
    for folder in defaults.values():
        assert (
            (PROJECT_ROOT / folder).is_dir()
            and not list((PROJECT_ROOT / folder).glob("*.py"))
            and not list((PROJECT_ROOT / folder).glob("*.crt"))
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_starts_with_the_plain_install_and_serve_scripts(dockerfile):
    text = (PROJECT_ROOT / dockerfile).read_text()
    assert "scripts/install --python-only" in text and "--dev" not in text and "scripts/install --java-only" in text
    assert "scripts/install --project-only" in text
    assert re.search(r'^ENTRYPOINT \["tini", "--", "scripts/serve"', text, re.M)
    assert re.search(r"^USER 10001$", text, re.M)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_holds_predict_batch_for_the_batch_job(dockerfile):
    """deploy/kubernetes/batch-job runs predict-batch from the server's image: the client is installed, its code copied."""
    text = (PROJECT_ROOT / dockerfile).read_text()
    assert "scripts/install --client-only" in text
    assert text.count("COPY client/ client/") == 2  # the build stage installs it editable; the final stage runs it


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_exposes_the_rest_shim_and_its_grpc_front(dockerfile):
    assert re.search(r"^EXPOSE 8501 8500$", (PROJECT_ROOT / dockerfile).read_text(), re.M)


def test_build_context_leaves_out_the_environment_and_build_output():
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "build", "model_store/*.mar"} <= set(ignored)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_healthcheck_asks_the_servers_readiness_which_needs_no_default_model(dockerfile):
    healthcheck = next(
        line for line in (PROJECT_ROOT / dockerfile).read_text().splitlines() if line.strip().startswith("CMD")
    )
    assert '"-m", "fastai_serving_scripts.healthcheck"' in healthcheck
    assert healthcheck_module.ready_url({"FASTAI_SERVING_PORT": "8501"}) == "http://127.0.0.1:8501/ready"


def test_the_healthcheck_asks_over_tls_where_the_fronts_speak_it():
    environment = {"FASTAI_SERVING_PORT": "8501", "FASTAI_SERVING_TLS_CERT_FILE": "/etc/fastai-serving/tls/tls.crt"}
    assert healthcheck_module.ready_url(environment) == "https://127.0.0.1:8501/ready"
