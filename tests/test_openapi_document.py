"""shim/rest/openapi.yaml documents every route the shim serves, each verb with and without a version."""

from __future__ import annotations

import base64
import itertools
import json
import re
from importlib import resources

import pytest
import yaml

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import BadInput
from fastai_serving.contract.instances import decode_base64, image_bytes
from fastai_serving.contract.vocabulary import VERBS
from fastai_serving.engine.images import decode_image
from fastai_serving_shim.protocols.v2_tensors import read_rest
from openapi_contract import schema_errors

DOCUMENT = yaml.safe_load(resources.files("fastai_serving_shim.rest").joinpath("openapi.yaml").read_text())
PATHS, SCHEMAS = DOCUMENT["paths"], DOCUMENT["components"]["schemas"]


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


# --- What the document refuses, the server refuses ----------------------------------------------------------

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def v2_request(name: str) -> dict:
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [PNG_B64]}]}


def read_image(body: dict) -> None:
    """The server's reading of a TF Serving body's one image: the body, its base64, then its bytes as an image."""
    decode_image(image_bytes(read_body(body).instances[0], "the image"), "the image")


@pytest.mark.parametrize(
    ("schema", "body", "server_reads", "refusal"),
    [
        ("PredictRequest", {"image_bytes": ""}, read_image, "the image is empty"),
        ("PredictRequest", {"instances": [{"image_bytes": {"b64": "0"}}]}, read_image, "the image is not valid base64"),
        ("PredictRequest", {"image_bytes": {"b64": "0"}}, read_image, "the image is not valid base64"),
        ("PredictRequest", {"inputs": {"b64": "0"}}, read_image, "the image is not valid base64"),
        ("V2InferRequest", v2_request(""), lambda body: read_rest(json.dumps(body).encode(), None),
         "input 0 has an empty 'name'"),
    ],
    ids=["empty image_bytes", "b64 not base64", "one b64 not base64", "columnar b64 not base64", "v2 input named ''"],
)  # fmt: skip
def test_the_document_refuses_what_the_server_refuses(schema, body, server_reads, refusal):
    assert schema_errors(schema, body), f"the document accepts {body}"
    with pytest.raises(BadInput, match="^" + refusal):
        server_reads(body)


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("PredictRequest", {"image_bytes": PNG_B64}),
        ("PredictRequest", {"instances": [{"b64": PNG_B64}, {"image_bytes": {"b64": PNG_B64.rstrip("=")}}]}),
        ("PredictRequest", {"inputs": {"b64": PNG_B64}}),
        ("PredictRequest", {"instances": [{"colour": "red", "size": 1.5}]}),
        ("V2InferRequest", v2_request("image_bytes")),
    ],
)
def test_the_document_accepts_the_bodies_it_documents(schema, body):
    assert schema_errors(schema, body) == []


def test_a_row_says_in_words_that_an_object_with_b64_is_an_image():
    # {"instances": [{"b64": "0"}]} fits the Row schema; a "not" saying otherwise leaves fuzzers no rows to generate.
    assert schema_errors("PredictRequest", {"instances": [{"b64": "0"}]}) == []
    assert 'An object with a "b64" key is an image, never a row' in SCHEMAS["Row"]["description"]
    with pytest.raises(BadInput, match="^the image is not valid base64"):
        read_image({"instances": [{"b64": "0"}]})


def base64_the_server_reads(text: str) -> bool:
    try:
        return len(decode_base64(text, "the image")) > 0  # no bytes at all: refused as an empty image
    except BadInput:
        return False


def base64_the_document_takes(text: str) -> bool:
    """The document's Base64Image (its minLength and pattern) as a JSON Schema validator reads it (re.search)."""
    schema = SCHEMAS["Base64Image"]
    return len(text) >= schema["minLength"] and re.search(schema["pattern"], text) is not None


def test_the_documents_base64_is_exactly_what_the_server_decodes():
    """Every string of up to 5 characters over both alphabets' symbols, padding, a blank and a non-ASCII letter."""
    texts = ["".join(chars) for size in range(6) for chars in itertools.product("A+_= é", repeat=size)]
    assert [text for text in texts if base64_the_document_takes(text) != base64_the_server_reads(text)] == []
