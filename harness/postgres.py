"""A private PostgreSQL cluster for tests: Debian's postgresql (scripts/install puts it there), on a free loopback port.

`initdb -A trust` and `pg_ctl start`, run as the `postgres` user when we are root (initdb refuses
root), in a folder of its own under the system temp folder, stopped and removed after.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.servers import free_port


def postgres_bin() -> Path:
    """The folder of initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]), reverse=True)
    initdb = found[0] if found else shutil.which("initdb")
    if not initdb:
        raise RuntimeError(
            "PostgreSQL is not installed: run scripts/install as root (it installs Debian's postgresql), "
            "or apt-get install postgresql"
        )
    return Path(initdb).parent


class PostgresCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="predict-batch-pg-"))
        self.bin = postgres_bin()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self._as_postgres, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(
                f"{' '.join(command)} failed: {result.stdout}{result.stderr}{log.read_text() if log.exists() else ''}"
            )

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
