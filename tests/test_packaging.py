"""The server's wheel, built from what the checkout holds and installed into a fresh venv, gives working commands.

The fresh venv sees the dev venv's third-party packages (torch, fastai, TorchServe) through a
`.pth` line rather than installing them again; the project's own packages come from the wheels
alone (the dev venv's editable installs are not active there), and it runs outside the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from harness import PROJECT_ROOT

pytestmark = pytest.mark.e2e

SERVER_PACKAGES = {"fastai_serving", "fastai_serving_shim", "fastai_serving_scripts"}
CLIENT_PACKAGES = {"fastai_serving_client", "fastai_serving_protos"}


def clean_copy(destination: Path) -> Path:
    """The checkout's files as a clone would have them (tracked and untracked, none ignored), links kept."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = PROJECT_ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


def build_wheel(source: Path, out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    result = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")  # --no-deps: this one alone
    return wheel


def top_level_packages(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The server's and the client's wheels, built from a clean copy of the checkout."""
    source = clean_copy(tmp_path_factory.mktemp("clone") / "fastai-serving")
    out = tmp_path_factory.mktemp("dist")
    client = build_wheel(source / "client", out / "client")
    server = build_wheel(source, out / "server")
    return {"server": server, "client": client}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheels) -> Path:
    """A new venv holding only the two wheels, seeing the dev venv's third-party packages; returns its bin folder."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dev-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    result = subprocess.run([*install, str(wheels["client"]), str(wheels["server"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def run_installed(bin_dir: Path, *command: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [str(bin_dir / command[0]), *command[1:]],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_servers_wheel_installs_only_the_projects_own_import_packages(wheels):
    assert top_level_packages(wheels["server"]) == SERVER_PACKAGES


def test_the_generated_protos_ship_in_the_clients_wheel_alone(wheels):
    assert top_level_packages(wheels["client"]) == CLIENT_PACKAGES


def test_the_servers_wheel_depends_on_the_client_from_the_sibling_folder(wheels):
    with zipfile.ZipFile(wheels["server"]) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    requirement = next(line for line in metadata.splitlines() if "fastai-serving-client" in line)
    assert requirement.startswith("Requires-Dist: fastai-serving-client[grpc] @ file://")
    assert requirement.endswith("/client")


def test_the_wheel_carries_torchserves_config_and_the_handler_as_files(wheels):
    with zipfile.ZipFile(wheels["server"]) as archive:
        for name, original in [
            ("config.properties", "config.properties"),
            ("log4j2.xml", "log4j2.xml"),
            ("torchserve_handler.py", "handler/torchserve_handler.py"),
        ]:
            assert archive.read(f"fastai_serving_scripts/torchserve/{name}") == (PROJECT_ROOT / original).read_bytes()


@pytest.mark.parametrize("command", ["make-archive", "serve", "reload"])
def test_the_installed_command_runs_each_tool(fresh_venv, tmp_path, command):
    result = run_installed(fresh_venv, "fastai-serving", command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_the_installed_command_lists_its_tools(fresh_venv, tmp_path):
    result = run_installed(fresh_venv, "fastai-serving", "--help", cwd=tmp_path)
    assert result.returncode == 0 and all(name in result.stdout for name in ("make-archive", "serve", "reload"))


def test_the_installed_client_gives_predict_batch(fresh_venv, tmp_path):
    result = run_installed(fresh_venv, "predict-batch", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--server" in result.stdout


def test_installed_make_archive_writes_to_the_working_folders_model_store(fresh_venv, tmp_path, small_learners):
    result = run_installed(
        fresh_venv, "fastai-serving", "make-archive", "--name", "tabular", "--learner", str(small_learners["tabular"]),
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(tmp_path / "model_store" / "tabular.mar") as archive:
        names = set(archive.namelist())
    assert {"torchserve_handler.py", "fastai_serving/contract/bodies.py"} <= names


def test_installed_packages_know_they_are_not_in_a_checkout(fresh_venv, tmp_path):
    code = (
        "import fastai_serving_scripts as s; assert s.checkout_root() is None, s.checkout_root(); "
        "assert str(s.MODEL_STORE) == 'model_store' and str(s.LOG_DIR) == 'logs'; "
        "assert all(p.is_file() and not p.is_symlink() for p in (s.TORCHSERVE_CONFIG, s.LOG_CONFIG, s.HANDLER_FILE))\n"
        "try:\n    import harness\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('harness is importable')"
    )
    result = run_installed(fresh_venv, "python", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
