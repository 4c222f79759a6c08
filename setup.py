"""The server's dependencies, computed when the wheel is built (pyproject.toml holds everything else).

They are requirements.txt's, plus the batch client's distribution (`fastai-serving-client`, with
its grpc extra): it holds TF Serving's generated messages, which the gRPC front imports, and the
grpcio and protobuf versions they need. The client is on no package index, so a build from a
checkout names the sibling client/ folder as a direct reference (a file URL, made absolute here:
a wheel's metadata cannot hold a relative one). FASTAI_SERVING_CLIENT_REQUIREMENT replaces that,
e.g. with `fastai-serving-client[grpc]==0.1.0` for an index that does hold the client.
"""

import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def runtime_requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def client_requirement() -> str:
    given = os.environ.get("FASTAI_SERVING_CLIENT_REQUIREMENT")
    if given:
        return given
    client = HERE / "client"
    if (client / "pyproject.toml").is_file():
        return f"fastai-serving-client[grpc] @ {client.as_uri()}"
    return "fastai-serving-client[grpc]"


setup(install_requires=[*runtime_requirements(), client_requirement()])
