"""Commands run as the image and the Kubernetes manifests run serve: uid 10001 with no capabilities.

The tests run as root (CI does), where the kernel allows what it refuses the image's user (a socket
filter on a listening socket, for one): `setpriv` drops to uid 10001 and every capability, as
`docker run --user 10001 --cap-drop ALL --security-opt no-new-privileges` does. That user must be
able to read the Python it runs: where the project's environment is built on a Python it cannot
read (one under /root, as pyenv installs it), a twin environment made from a readable Python of
the same version sees the project's packages (its site-packages, editable installs included) and
runs its commands (gunicorn, torchserve) under that Python. When we are not root, we already are
unprivileged, and commands run as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

UID = 10001  # the image's user (Dockerfile.cpu's USER) and deploy/kubernetes' runAsUser
SETPRIV_PROGRAM = "setpriv"  # util-linux: runs a command with other privileges and process settings
SETPRIV = [
    SETPRIV_PROGRAM, f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("gunicorn", "torchserve")  # what serve runs from its environment's bin folder


class Unprivileged:
    """Where an unprivileged run lives (`folder`: its home, temp folder and twin environment) and how to start it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.as_root = os.geteuid() == 0
        self.python = self._readable_python() if self.as_root else Path(sys.executable)

    def environment(self) -> dict[str, str]:
        """The environment of a run: its own home and temp folder, and the Python scripts/serve takes (lib.sh)."""
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            os.chown(home, UID, UID)
        path = f"{self.python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {
            **os.environ,
            "HOME": str(home),
            "TMPDIR": str(home),
            "PYTHON": str(self.python),
            "PATH": path,
            # the suite's compile cache is in root's own temp folders: torch would fail to load anything
            "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor-cache"),
        }

    def command(self, command: list[str], *owned: Path) -> list[str]:
        """`command` as uid 10001 without capabilities; `owned` (and the run's folder) made that user's first."""
        if not self.as_root:
            return command
        for folder in (self.folder, *owned):
            for path in (folder, *folder.rglob("*")):
                os.chown(path, UID, UID, follow_symlinks=False)
        unreadable = [str(path) for path in (ROOT, self.python.resolve()) if not world_readable(path)]
        if unreadable:
            raise PermissionError(
                f"uid {UID} cannot read {', '.join(unreadable)}: check out the project where every user may read it"
            )
        return [*SETPRIV, *command]

    def _readable_python(self) -> Path:
        """The environment's own Python where every user may read it, else a twin environment's in `folder`."""
        if world_readable(Path(sys.executable).resolve()):
            return Path(sys.executable)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        found = shutil.which(version, path="/usr/local/bin:/usr/bin")
        base = Path(found) if found else None
        if base is None or not world_readable(base.resolve()):
            raise PermissionError(
                f"this environment's Python ({Path(sys.executable).resolve()}) is one uid {UID} cannot read, and "
                f"no readable {version} is in /usr/local/bin or /usr/bin to stand in for it"
            )
        twin = self.folder / "twin-venv"
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(twin)], check=True, timeout=120)
        site_packages = Path(sysconfig.get_paths()["purelib"])
        twin_site = Path(
            subprocess.run(
                [str(twin / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout.strip()
        )  # fmt: skip
        # A .pth line that starts with "import" runs: the project's site-packages, with its own .pth files.
        (twin_site / "project-environment.pth").write_text(f"import site; site.addsitedir({str(site_packages)!r})\n")
        for name in COMMANDS:
            original = Path(sys.executable).parent / name
            lines = original.read_text().splitlines(keepends=True)
            (twin / "bin" / name).write_text(f"#!{twin / 'bin' / 'python'}\n" + "".join(lines[1:]))
            (twin / "bin" / name).chmod(0o755)
        return twin / "bin" / "python"


def world_readable(path: Path) -> bool:
    """Whether any user may read `path` and walk every folder above it."""
    folders_open = all(os.stat(part).st_mode & 0o005 == 0o005 for part in path.parents)
    return folders_open and bool(os.stat(path).st_mode & 0o004)
