"""shim/openapi.yaml documents every route the shim serves, each verb with and without a version."""

from __future__ import annotations

from importlib import resources

import yaml

from fastai_serving.vocabulary import VERBS

PATHS = yaml.safe_load(resources.files("fastai_serving_shim").joinpath("openapi.yaml").read_text())["paths"]


def test_every_verb_is_documented_for_a_model_and_for_one_version():
    for verb in VERBS:
        assert "post" in PATHS[f"/v1/models/{{model}}:{verb}"]
        assert "post" in PATHS[f"/v1/models/{{model}}/versions/{{version}}:{verb}"]


def test_status_metadata_analyze_and_readiness_are_documented():
    for path in ("/", "/metrics", "/v1/models", "/analyze", "/analyze/metadata", "/ready", "/v1/models/{model}", "/v1/models/{model}/versions/{version}",
                 "/v1/models/{model}/metadata", "/v1/models/{model}/versions/{version}/metadata"):  # fmt: skip
        assert "get" in PATHS[path], path
    assert "post" in PATHS["/analyze:predict"]


def test_every_prediction_route_documents_the_same_errors():
    for path, operations in PATHS.items():
        if "post" in operations:
            assert {"400", "404", "413", "500", "503", "504"} <= set(operations["post"]["responses"]), path


def test_every_v2_route_is_documented_for_a_model_and_for_one_version():
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
        assert "get" in PATHS[path], path
    for model_path in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        assert "get" in PATHS[model_path] and "get" in PATHS[f"{model_path}/ready"]
        assert "post" in PATHS[f"{model_path}/infer"]
