"""A client program run in its own test-only environment, spoken to one JSON line each way.

TF Serving's client (tensorflow) and Triton's and KServe's clients (each registering the `inference`
proto package) cannot share the server's environment or one another's, so each runs as a subprocess:
it prints {"ready": <its version>} once, then answers each JSON command line with one JSON line.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


class ClientProcess:
    """`program` run by `venv`'s Python with `args`; its stderr goes to `log`. `who` names it in errors."""

    def __init__(self, venv: Path, program: Path, args: list[str], log: Path, who: str) -> None:
        python = venv / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{python} is missing: `make install-dev` creates {who}'s environment")
        self.who = who
        self._log = open(log, "wb")  # open as long as the client runs
        self.process = subprocess.Popen(
            [str(python), str(program), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.version = self._read()["ready"]

    def call(self, call: str, **command: Any) -> dict[str, Any]:
        """Send {"call": call, **command}; the program's answer."""
        self.process.stdin.write(json.dumps({"call": call, **command}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.who} exited ({self.process.poll()}): see {self._log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._log.close()
