"""Validate rendered Kubernetes manifests offline, strictly: an unknown field or a wrong type is an error.

- Core resources (Deployment, Service, HPA, PDB, ConfigMap, PVC): Kubernetes' own OpenAPI
  schemas, as kubernetes-validate bundles them, for each Kubernetes version named.
- KServe's InferenceService: the KServe SDK's models, which KServe generates from its CRD's
  schema (the CRD file itself is published in no package registry these machines reach).

Usage: python deploy/validate_manifests.py --kubernetes 1.30.0 [--kubernetes 1.37.0] RENDERED.yaml...
Prints one line per problem and exits 1 if there is any. Runs in the tools environment that
scripts/install makes (.venv-deploy): the KServe SDK pins packages the serving one does not share.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as kubernetes_models
import kubernetes_validate
import yaml

PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
    "ResourceQuantity": (str, int, float),
}
CUSTOM = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}


def problems_of_custom(document: dict[str, Any], model_name: str) -> list[str]:
    return _check(document, model_name, document.get("kind", "?"))


def _model_class(name: str) -> Any:
    return getattr(kserve_models, name, None) or getattr(kubernetes_models, name, None)


def _check(value: Any, type_name: str, where: str) -> list[str]:
    """Every way `value` does not fit the SDK model `type_name` (a list, a map, a model, a primitive).

    KServe's models write list[X] and dict(str, X); the Kubernetes client's, List[X] and Dict[str, X].
    """
    if value is None:
        return []
    if match := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _check(item, match[1], f"{where}[{i}]")]
    if match := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a map, got {type(value).__name__}"]
        item_type = match[1] or match[2]
        return [p for key, item in value.items() for p in _check(item, item_type, f"{where}.{key}")]
    if type_name in PRIMITIVES:
        kinds = PRIMITIVES[type_name]
        wrong = not isinstance(value, kinds) or (type_name in ("int", "float") and isinstance(value, bool))
        return [f"{where}: expected {type_name}, got {value!r}"] if wrong else []
    model = _model_class(type_name)
    if model is None:
        return [f"{where}: the SDK has no model {type_name}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name}), got {type(value).__name__}"]
    fields = {json_name: model.openapi_types[python_name] for python_name, json_name in model.attribute_map.items()}
    problems = [f"{where}.{key}: unknown field of {type_name}" for key in value if key not in fields]
    return problems + [
        p for key, item in value.items() if key in fields for p in _check(item, fields[key], f"{where}.{key}")
    ]


def problems_of(document: dict[str, Any], versions: list[str]) -> list[str]:
    name = f"{document.get('kind', '?')} {document.get('metadata', {}).get('name', '?')}"
    custom = CUSTOM.get((document.get("apiVersion"), document.get("kind")))
    if custom is not None:
        return [f"{name}: {problem}" for problem in problems_of_custom(document, custom)]
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name} (Kubernetes {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name} (Kubernetes {version}): no schema: {error}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes", action="append", required=True, help="a Kubernetes version, e.g. 1.30.0")
    parser.add_argument("manifests", nargs="+", type=Path)
    args = parser.parse_args(argv)
    problems, count = [], 0
    for path in args.manifests:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                count += 1
                problems += [f"{path.name}: {problem}" for problem in problems_of(document, args.kubernetes)]
    for problem in problems:
        print(problem)
    print(f"validated {count} resources against Kubernetes {', '.join(args.kubernetes)}: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
