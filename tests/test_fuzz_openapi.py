"""Property-based fuzzing of the shim from its OpenAPI document (schemathesis), against the real servers.

Whatever it sends: no 5xx, only documented statuses, every body matching the document; and
the server still answers correctly afterwards. Two runs: the document as it is (mostly unknown
model names), and the document with the model and version narrowed to those served, so that
generated bodies reach the handler.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from openapi_contract import operation_count

pytestmark = pytest.mark.e2e

SPEC = Path(__file__).resolve().parent.parent / "shim" / "rest" / "openapi.yaml"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def fuzzed_spec(folder: Path, served_models: list[str] | None) -> Path:
    """The OpenAPI document as fuzzed: without the X-Request-Timeout header, and with {model} and {version}
    limited to what the test servers serve when `served_models` is given.

    X-Request-Timeout is left out because a client's own deadline shorter than an answer takes is a 504 by
    design (the front stops waiting when its client does), which the fuzzer's server-error check counts as a
    failure; test_overload checks that path, and a timeout that is not a duration (a 400) is checked in
    test_admission.

    Not "classifier", "tabular" or "text": they gather each batch for 400 ms (for the batching
    tests), which would make every generated request wait; "digits", "tabular_multilabel" and
    "text_multilabel" are models of the same kinds.
    """
    document = yaml.safe_load(SPEC.read_text())
    for path in document["paths"].values():
        for operation in path.values():
            operation["parameters"] = [p for p in operation.get("parameters", []) if "requestTimeout" not in p["$ref"]]
    del document["components"]["parameters"]["requestTimeout"]
    if served_models is not None:
        parameters = document["components"]["parameters"]
        served = sorted(set(served_models) - {"classifier", "tabular", "text"})
        parameters["model"]["schema"] = {"type": "string", "enum": served}
        parameters["version"]["schema"] = {"type": "string", "enum": ["1"]}
    path = folder / ("openapi-served-models.yaml" if served_models is not None else "openapi-fuzzed.yaml")
    path.write_text(yaml.safe_dump(document))
    return path


def schemathesis_run(spec: Path, base_url: str, examples: int) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", str(spec), "--url", base_url,
        "--checks", CHECKS, "--max-examples", str(examples), "--seed", "7",
        "--request-timeout", "60", "--no-color",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("narrowed", [False, True], ids=["any-model", "served-models"])
def test_fuzzed_requests_get_documented_answers_and_no_server_error(torchserve, tmp_path, narrowed):
    served_models = list(requests.get(f"{torchserve.shim}/ready", timeout=10).json()["models"])
    spec = fuzzed_spec(tmp_path, served_models if narrowed else None)
    # Narrowed, every case reaches a model's worker: fewer examples keep the run to about a minute.
    result = schemathesis_run(spec, torchserve.shim, examples=12 if narrowed else 25)
    assert result.returncode == 0, result.stdout[-6000:]
    assert f"Tested: {operation_count()}" in result.stdout


def test_after_fuzzing_the_server_still_answers_correctly(torchserve, demo_model):
    image = base64.b64encode((demo_model / "samples" / "5.png").read_bytes()).decode()
    response = requests.post(f"{torchserve.shim}/analyze:predict", json={"instances": [{"b64": image}]}, timeout=60)
    assert response.status_code == 200 and int(np.argmax(response.json()["predictions"][0])) == 5
