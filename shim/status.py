"""TorchServe's model descriptions as TF Serving's status and metadata bodies, and URL versions."""

from __future__ import annotations

import re
from typing import Any

from fastai_serving.columns import BOOLEAN, CONTINUOUS, INTEGER, NUMBER
from fastai_serving.names import check_url_version
from fastai_serving.vocabulary import CLASS_INDEX_SIGNATURE, CLASSIFIERS, IMAGE_INPUT, SEGMENTATION
from fastai_serving_shim.errors import Failure, ServiceError
from fastai_serving_shim.torchserve import has_ready_worker


def tf_version(torchserve_version: str) -> str:
    """TF Serving's integer version for TorchServe's "1.0" (a version that is not N or N.0 stays as it is)."""
    match = re.fullmatch(r"([0-9]+)(?:\.0+)?", torchserve_version)
    return match.group(1) if match else torchserve_version


def resolve_version(url_version: str, descriptions: list[dict[str, Any]], model: str) -> str:
    """The TorchServe version ("2.0") that a URL's /versions/2 names; 404 when none does."""
    check_url_version(url_version)
    wanted = str(int(url_version))
    for description in descriptions:
        if tf_version(str(description.get("modelVersion", ""))) == wanted:
            return str(description["modelVersion"])
    raise ServiceError(Failure.NOT_FOUND, f"model {model!r} has no version {url_version}")


def status_body(model: str, descriptions: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """TF Serving's model_version_status (plus KServe v1's name and ready); 200 only when it can serve."""
    statuses = []
    for description in descriptions:
        ready = has_ready_worker(description)
        statuses.append(
            {
                "version": tf_version(str(description.get("modelVersion", ""))),
                "state": "AVAILABLE" if ready else "LOADING",
                "status": {
                    "error_code": "OK" if ready else "UNAVAILABLE",
                    "error_message": "" if ready else "no worker is ready yet",
                },
            }
        )
    ready = any(status["state"] == "AVAILABLE" for status in statuses)
    return (200 if ready else 503), {"model_version_status": statuses, "name": model, "ready": ready}


def signature_output(task: str, signature_name: str) -> tuple[str, str]:
    """The name and dtype of a signature's one output: what the metadata advertises and a gRPC answer carries."""
    if signature_name == CLASS_INDEX_SIGNATURE:
        return "classes", "DT_INT64"  # the original fastai-serving's answer: class indices
    if task == SEGMENTATION:
        return "mask", "DT_INT64"  # the class-index mask of each image, [n, height, width]
    if task in CLASSIFIERS:
        return "probabilities", "DT_FLOAT"  # probabilities (or multi-label scores) per class
    return "outputs", "DT_FLOAT"  # the regression values


def signature_inputs(described: dict[str, Any]) -> dict[str, Any]:
    """TF Serving's tensor info for each input the handler describes: the image, the text, or each column."""
    inputs = described.get("inputs") or [{"name": IMAGE_INPUT, "kind": "image"}]
    return {
        str(item["name"]): {
            "dtype": _dtype(item),
            "tensor_shape": {"dim": [{"size": "-1"}]},
            "name": f"{item['name']}:0",
        }
        for item in inputs
    }


def _dtype(item: dict[str, Any]) -> str:
    """A column's TF dtype from its kind and JSON type; images and texts are strings."""
    if item.get("kind") == CONTINUOUS:
        return "DT_FLOAT"
    return {INTEGER: "DT_INT64", NUMBER: "DT_FLOAT", BOOLEAN: "DT_BOOL"}.get(item.get("type", ""), "DT_STRING")


def metadata_body(model: str, version: str, described: dict[str, Any]) -> dict[str, Any]:
    """TF Serving's metadata shape, with the fastai facts a client needs (task, classes, inputs)."""
    classes = described.get("classes", [])
    output_name, dtype = signature_output(str(described.get("task", "")), "")
    width = len(classes) or len(described.get("targets", [])) or -1
    dims = [-1, -1, -1] if described.get("task") == SEGMENTATION else [-1, width]
    outputs = {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size)} for size in dims]}}
    inputs = signature_inputs(described)
    signatures = {
        "serving_default": {
            "inputs": inputs,
            "outputs": {output_name: {**outputs, "name": "outputs:0"}},
            "method_name": "tensorflow/serving/predict",
        }
    }
    if described.get("task") in CLASSIFIERS:
        signatures["classes"] = {
            "inputs": inputs,
            "outputs": {
                "classes": {"dtype": "DT_INT64", "tensor_shape": {"dim": [{"size": "-1"}]}, "name": "classes:0"}
            },
            "method_name": "tensorflow/serving/predict",
        }
    return {
        "model_spec": {"name": model, "signature_name": "", "version": tf_version(version)},
        "metadata": {"signature_def": {"signature_def": signatures}, "fastai": described},
    }
