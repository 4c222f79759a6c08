"""scripts/install: a failed install is reported and retried, never stamped as done.

A stand-in `python` (in a throwaway VENV) plays pip failing; nothing is installed for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from fastai_serving_scripts import PROJECT_ROOT

FAKE_PYTHON = """#!/bin/sh
# pip fails to install a requirement; every other call (the import check) succeeds.
case "$*" in
  *"pip install"*) echo "ERROR: No matching distribution found for jsonschema" >&2; exit 1 ;;
  *) exit 0 ;;
esac
"""


def install_with_failing_pip(venv: Path, step: str = "--python-only") -> subprocess.CompletedProcess:
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    command = [str(PROJECT_ROOT / "scripts" / "install"), step]
    environment = {"VENV": str(venv), "TFCLIENT_VENV": str(venv), "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)


def test_a_requirement_pip_could_not_install_fails_the_install(tmp_path):
    result = install_with_failing_pip(tmp_path / "venv")
    assert result.returncode == 1
    assert "pip could not install requirements-dev.txt" in result.stdout
    assert "No matching distribution found for jsonschema" in result.stderr


def test_a_failed_install_is_not_stamped_so_the_next_run_tries_again(tmp_path):
    install_with_failing_pip(tmp_path / "venv")
    assert not (tmp_path / "venv" / ".installed-requirements").exists()


def test_a_failed_install_of_tf_servings_test_client_is_reported_and_not_stamped(tmp_path):
    result = install_with_failing_pip(tmp_path / "tfclient", "--tfclient-only")
    assert result.returncode == 1
    assert "pip could not install requirements-tfclient.txt" in result.stdout
    assert not (tmp_path / "tfclient" / ".installed-requirements").exists()


def test_the_runtime_install_never_makes_tf_servings_test_client(tmp_path):
    command = [str(PROJECT_ROOT / "scripts" / "install"), "--runtime-only", "--tfclient-only"]
    environment = {"TFCLIENT_VENV": str(tmp_path / "tfclient"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0 and not (tmp_path / "tfclient").exists()
