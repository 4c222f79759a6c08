"""scripts/install: serving installs what serving needs, --dev the tests' tools; a failed install is reported
and retried, never stamped as done.

A stand-in `python` (in a throwaway VENV) plays pip failing; nothing is installed for real.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from harness import PROJECT_ROOT

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
    assert "pip could not install requirements.txt" in result.stdout
    assert "No matching distribution found for jsonschema" in result.stderr


def test_a_test_tool_pip_could_not_install_fails_the_dev_install_unstamped(tmp_path):
    result = install_with_failing_pip(tmp_path / "venv", "--dev-only")
    assert result.returncode == 1
    assert "pip could not install requirements-dev.txt" in result.stdout
    assert not (tmp_path / "venv" / ".installed-dev-requirements").exists()
    assert "No matching distribution found for jsonschema" in result.stderr


def test_a_failed_install_is_not_stamped_so_the_next_run_tries_again(tmp_path):
    install_with_failing_pip(tmp_path / "venv")
    assert not (tmp_path / "venv" / ".installed-requirements").exists()


def test_a_failed_install_of_tf_servings_test_client_is_reported_and_not_stamped(tmp_path):
    result = install_with_failing_pip(tmp_path / "tfclient", "--tfclient-only")
    assert result.returncode == 1
    assert "pip could not install requirements-tfclient.txt" in result.stdout
    assert not (tmp_path / "tfclient" / ".installed-requirements").exists()


def install_steps(*options: str) -> list[str]:
    command = [str(PROJECT_ROOT / "scripts" / "install"), *options, "--print-steps"]
    result = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_serving_install_holds_what_serving_needs_and_no_test_tool():
    assert install_steps() == ["java", "nginx", "python", "project", "client"]


def test_the_dev_install_adds_the_test_tools_after_the_serving_steps():
    assert install_steps("--dev") == [
        "java", "nginx", "python", "project", "client", "dev", "tools", "tfclient", "v2client", "geo", "postgresql"
    ]  # fmt: skip


def test_the_makefile_installs_test_tools_for_the_tests_only():
    targets = dict(re.findall(r"^([a-z-]+):([^#\n]*)", (PROJECT_ROOT / "Makefile").read_text(), re.M))
    assert targets["serve"].split() == ["demo"] and targets["demo"].split() == ["install"]
    assert "install-dev" in targets["test"].split() and "install-dev" in targets["test-fast"].split()
