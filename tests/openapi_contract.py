"""Checks that a live response matches shim/rest/openapi.yaml: its status is documented and its body fits the schema."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import quote

import jsonschema
import requests
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SPEC_FILE = Path(__file__).resolve().parent.parent / "shim" / "rest" / "openapi.yaml"
SPEC_URI = "urn:fastai-serving:openapi"


@cache
def spec() -> dict:
    return yaml.safe_load(SPEC_FILE.read_text())


def operation_count() -> int:
    """How many operations (path and method) the document describes."""
    return sum(len(operations) for operations in spec()["paths"].values())


@cache
def registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource(contents=spec(), specification=DRAFT7))


def assert_matches_spec(response: requests.Response, path: str, method: str) -> None:
    """`path` is the spec's path template, e.g. "/v1/models/{model}:predict"."""
    documented = spec()["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {path} answered {status}, which the OpenAPI document does not list"
    if "application/json" not in documented[status].get("content", {}):
        return
    pointer = "/".join(
        part.replace("~", "~0").replace("/", "~1")
        for part in ["", "paths", path, method.lower(), "responses", status, "content", "application/json", "schema"]
    )
    schema = {"$ref": f"{SPEC_URI}#{quote(pointer, safe='/~')}"}
    validator = jsonschema.Draft7Validator(schema, registry=registry())
    errors = sorted(validator.iter_errors(response.json()), key=str)
    assert not errors, f"{method} {path} {status} body does not match the OpenAPI document: {errors[0].message}"


def schema_errors(schema: str, value: object) -> list[str]:
    """How `value` breaks the document's component schema `schema` (a request body's or a part's); [] if it fits."""
    validator = jsonschema.Draft7Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema}"}, registry=registry())
    return [error.message for error in validator.iter_errors(value)]
