"""The Open Inference Protocol's own clients (harness/v2_client.py) as a subprocess in their test-only environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.client_process import ClientProcess

ROOT = Path(__file__).resolve().parent.parent
# scripts/install makes it (the development install only): tritonclient[http,grpc] and the KServe SDK.
V2CLIENT_VENV = Path(os.environ.get("FASTAI_SERVING_V2CLIENT_VENV", ROOT / ".venv-v2client"))
PROGRAM = Path(__file__).resolve().parent / "v2_client.py"
CLIENTS = ("triton_http", "triton_grpc", "kserve_rest", "kserve_grpc")


class V2Clients:
    """Triton's and KServe's clients, one process each: `call("infer", client="triton_http", model=..., inputs=[...])`."""

    def __init__(self, rest_address: str, grpc_address: str, log_dir: Path) -> None:
        self.families = {family: V2Client(family, rest_address, grpc_address, log_dir / f"v2-{family}.log")
                         for family in ("triton", "kserve")}  # fmt: skip

    def call(self, call: str, client: str, **command: Any) -> dict[str, Any]:
        """-> {"ok": True, ...the answer} or {"ok": False, "status": <HTTP status or gRPC code>, "message": ...}."""
        return self.families[client.split("_")[0]].call(call, client=client, **command)

    def close(self) -> None:
        for family in self.families.values():
            family.close()


class V2Client(ClientProcess):
    """One family's clients (harness/v2_client.py triton|kserve) as a subprocess, one JSON line each way."""

    def __init__(self, family: str, rest_address: str, grpc_address: str, log: Path) -> None:
        super().__init__(V2CLIENT_VENV, PROGRAM, [family, rest_address, grpc_address], log, f"the {family} v2 clients")
