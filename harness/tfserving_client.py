"""TF Serving's own client (harness/tf_client.py) as a subprocess in its test-only environment, one JSON line each way."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# scripts/install makes it (the development install only): tensorflow-cpu and tensorflow-serving-api.
TFCLIENT_VENV = Path(os.environ.get("FASTAI_SERVING_TFCLIENT_VENV", ROOT / ".venv-tfclient"))
PROGRAM = Path(__file__).resolve().parent / "tf_client.py"


def encoded(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


class TFServingClient:
    """`call("predict", model=..., images=[...])` -> the client's answer: {"ok": True, ...} or {"ok": False, "code", "details"}."""

    def __init__(self, address: str, log: Path) -> None:
        python = TFCLIENT_VENV / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{python} is missing: `make install` creates TF Serving's client environment")
        self._log = open(log, "wb")  # open as long as the client runs
        self.process = subprocess.Popen(
            [str(python), str(PROGRAM), address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.version = self._read()["ready"]

    def call(self, call: str, images: list[bytes] | None = None, **command: Any) -> dict[str, Any]:
        if images is not None:
            command["images"] = encoded(images)
        self.process.stdin.write(json.dumps({"call": call, **command}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"TF Serving's client exited ({self.process.poll()}): see {self._log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._log.close()
