"""TF Serving's own client (harness/tf_client.py) as a subprocess in its test-only environment, one JSON line each way."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from harness.client_process import ClientProcess

ROOT = Path(__file__).resolve().parent.parent
# scripts/install makes it (the development install only): tensorflow-cpu and tensorflow-serving-api.
TFCLIENT_VENV = Path(os.environ.get("FASTAI_SERVING_TFCLIENT_VENV", ROOT / ".venv-tfclient"))
PROGRAM = Path(__file__).resolve().parent / "tf_client.py"


def encoded(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


class TFServingClient(ClientProcess):
    """`call("predict", model=..., images=[...])` -> the client's answer: {"ok": True, ...} or {"ok": False, "code", "details"}."""

    def __init__(self, address: str, log: Path) -> None:
        super().__init__(TFCLIENT_VENV, PROGRAM, [address], log, "TF Serving's client")

    def call(self, call: str, images: list[bytes] | None = None, **command: Any) -> dict[str, Any]:
        if images is not None:
            command["images"] = encoded(images)
        return super().call(call, **command)
