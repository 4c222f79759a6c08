"""Property-based fuzzing of the shim from its OpenAPI document (schemathesis), against the real servers.

Whatever it sends: no 5xx, only documented statuses, every body matching the document; and
the server still answers correctly afterwards.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

SPEC = Path(__file__).resolve().parent.parent / "shim" / "openapi.yaml"


@pytest.fixture(scope="session")
def shim_api(torchserve):
    return schemathesis.openapi.from_path(SPEC)


schema = schemathesis.pytest.from_fixture("shim_api")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_documented_answers_and_no_server_error(case, torchserve):
    case.call_and_validate(
        base_url=torchserve.shim,
        timeout=60,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance],
    )


def test_after_fuzzing_the_server_still_answers_correctly(torchserve, demo_model):
    image = base64.b64encode((demo_model / "samples" / "5.png").read_bytes()).decode()
    response = requests.post(f"{torchserve.shim}/analyze:predict", json={"instances": [{"b64": image}]}, timeout=60)
    assert response.status_code == 200 and int(np.argmax(response.json()["predictions"][0])) == 5
