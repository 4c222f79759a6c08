"""One model schema, rendered by both protocols: each task's output and each input's element type.

TF Serving's metadata and tensors and the Open Inference Protocol's name the same things in their
own words (DT_FLOAT and FP32; "outputs" and "values"): the schema says what a model's output and
inputs are, once, from the handler's description; `tf_dtype` and `v2_datatype` say it each way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastai_serving.contract.columns import BOOLEAN, CATEGORICAL, INTEGER, NUMBER, STRING
from fastai_serving.contract.vocabulary import (
    CLASS_INDEX_SIGNATURE,
    MULTI_LABEL,
    REGRESSION,
    SEGMENTATION,
    SINGLE_LABEL,
)

# Element types: what one element of a tensor holds.
FLOAT32, FLOAT64, INT64, BOOL, BYTES = "float32", "float64", "int64", "bool", "bytes"
TF_DTYPES = {FLOAT32: "DT_FLOAT", INT64: "DT_INT64", BOOL: "DT_BOOL", BYTES: "DT_STRING",
             FLOAT64: "DT_FLOAT"}  # fmt: skip  # TF Serving's clients have always read number categories as float
V2_DATATYPES = {FLOAT32: "FP32", FLOAT64: "FP64", INT64: "INT64", BOOL: "BOOL", BYTES: "BYTES"}


@dataclass(frozen=True)
class Output:
    """A task's one output: its name in each protocol, and its element type."""

    tf_name: str  # TF Serving's output alias (and the REST metadata's)
    v2_name: str  # the Open Inference Protocol's output tensor
    element: str


OUTPUTS = {
    SINGLE_LABEL: Output("probabilities", "probabilities", FLOAT32),  # one probability per class
    MULTI_LABEL: Output("probabilities", "scores", FLOAT32),  # one score per class
    REGRESSION: Output("outputs", "values", FLOAT32),  # the target values
    SEGMENTATION: Output("mask", "mask", INT64),  # the class-index mask of each image, [n, height, width]
}
OTHER_TASK = Output("outputs", "values", FLOAT32)
CLASS_INDICES = Output("classes", "classes", INT64)  # signature_name "classes": the original server's answer


def output_of(task: str, signature_name: str = "") -> Output:
    """The output a task answers (with TF Serving's `classes` signature: the class indices)."""
    if signature_name == CLASS_INDEX_SIGNATURE:
        return CLASS_INDICES
    return OUTPUTS.get(task, OTHER_TASK)


def output_shape(described: Mapping[str, Any]) -> list[int]:
    """The output's shape: [n, classes] (or targets), or a segmentation's [n, height, width]; -1 where unknown."""
    if described.get("task") == SEGMENTATION:
        return [-1, -1, -1]
    width = len(described.get("classes", [])) or len(described.get("targets", [])) or -1
    return [-1, width]


def column_element(column: Mapping[str, Any]) -> str:
    """The element type of a tabular column's input: continuous values are float32; categories their JSON type."""
    if column.get("kind") != CATEGORICAL:
        return FLOAT32
    return {STRING: BYTES, INTEGER: INT64, NUMBER: FLOAT64, BOOLEAN: BOOL}.get(str(column.get("type")), BYTES)


def input_element(item: Mapping[str, Any]) -> str:
    """The element type of one described input: an image or a text is bytes; a column as `column_element`."""
    if item.get("kind") in ("image", "text"):
        return BYTES
    return column_element(item)
