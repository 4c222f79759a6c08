"""A typed stand-in for TorchServe (`fastai_serving_shim.torchserve.Upstream`), for the in-process tests of the
service and of each front.

It answers what TorchServe would (models, their versions, what each describes, an answer per instance)
from a table, and records every call. Each test file chooses its answers (`answer`, or `failure` to raise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastai_serving.contract.bodies import read_body
from fastai_serving.contract.errors import NotFound, ServingError
from fastai_serving.contract.images_wire import is_images_body, read_images_body
from fastai_serving_shim.torchserve import Answer, ModelVersion

DESCRIBED = {
    "classification": {"task": "classification", "classes": ["cat", "dog"], "input": "image", "precision": "fp32"},
    "multilabel_classification": {"task": "multilabel_classification", "classes": ["a", "b"], "input": "image"},
    "regression": {"task": "regression", "classes": [], "input": "image", "precision": "fp32"},
    "segmentation": {"task": "segmentation", "classes": ["background", "road"], "input": "image"},
}
COLUMNS = [
    {"name": "colour", "kind": "categorical", "type": "string", "categories": ["blue", "red"], "nullable": True},
    {"name": "weight", "kind": "continuous", "type": "number", "nullable": True},
]
V2_DESCRIBED = {
    "vision": {"task": "classification", "kind": "vision", "classes": ["cat", "dog"], "input": "image"},
    "tabular": {"task": "regression", "kind": "tabular", "classes": [], "targets": ["price"], "inputs": COLUMNS},
}
PREDICTIONS = b'{"predictions": [[0.25, 0.75]]}'


def version(number: str, ready: bool = True) -> ModelVersion:
    """One registered version, as TorchServe's management API describes it."""
    return ModelVersion(number, ready)


def instances_of(body: bytes, verb: str) -> int:
    """How many instances a body the service sent upstream holds (the images body, or JSON)."""
    if is_images_body(body):
        return len(read_images_body(body)[1])
    return len(read_body(body, verb).instances)


@dataclass
class FakeTorchServe:
    """TorchServe from a table: model -> its versions (the first is the default), every model described as
    `described`; each inference answered with `answer` (None: one [0.25, 0.75] per instance sent), or `failure`
    raised. Records each call: ("models",), ("versions", model), ("default", model), ("describe", model, version),
    ("infer", model, version, body, content type, verb, timeout)."""

    served: dict[str, list[ModelVersion]] = field(default_factory=lambda: {"digits": [version("1.0")]})
    described: dict[str, Any] = field(default_factory=lambda: DESCRIBED["classification"])
    answer: Answer | None = None
    failure: ServingError | None = None
    calls: list[tuple] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)  # each inference's client deadline, as sent
    request_ids: list[str] = field(default_factory=list)  # each inference's request id, as sent

    def models(self) -> list[str]:
        self.calls.append(("models",))
        return list(self.served)

    def versions(self, model: str) -> list[ModelVersion]:
        self.calls.append(("versions", model))
        return list(self._versions(model))

    def default_version(self, model: str) -> ModelVersion:
        self.calls.append(("default", model))
        return self._versions(model)[0]

    def describe(self, model: str, version: str) -> dict[str, Any]:
        self.calls.append(("describe", model, version))
        self._versions(model)
        return dict(self.described)

    def infer(
        self,
        model: str,
        version: str | None,
        body: bytes,
        content_type: str,
        verb: str,
        timeout_s: float,
        deadline: float | None = None,
        request_id: str = "",
    ) -> Answer:
        self.calls.append(("infer", model, version, body, content_type, verb, timeout_s))
        self.deadlines.append(deadline)
        self.request_ids.append(request_id)
        versions = self._versions(model)
        if self.failure is not None:
            raise self.failure
        if self.answer is not None:
            return self.answer
        answered_by = version or versions[0].version
        values = [[0.25, 0.75]] * instances_of(body, verb)
        return Answer(json.dumps({"predictions": values}).encode(), answered_by, str(self.described.get("task", "")))

    def metrics(self) -> bytes | None:
        return None

    def count(self, kind: str) -> int:
        return sum(call[0] == kind for call in self.calls)

    def inferred(self) -> list[tuple]:
        """Each inference call as (model, version, body, verb)."""
        return [(call[1], call[2], call[3], call[5]) for call in self.calls if call[0] == "infer"]

    def _versions(self, model: str) -> list[ModelVersion]:
        if model not in self.served:
            raise NotFound(f"model {model!r} not found")
        return self.served[model]


@dataclass
class V2FakeTorchServe(FakeTorchServe):
    """A v2 front's TorchServe: a model of `kind` (V2_DESCRIBED), each prediction answered with one [0.25, 0.75]
    (tabular: [1.5]) per instance sent, or `answer`; `sent` records (model, version, body, content type, timeout)."""

    kind: str = "vision"
    sent: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.described = V2_DESCRIBED[self.kind]

    def infer(
        self,
        model: str,
        version: str | None,
        body: bytes,
        content_type: str,
        verb: str,
        timeout_s: float,
        deadline: float | None = None,
        request_id: str = "",
    ) -> Answer:
        versions = self._versions(model)
        self.request_ids.append(request_id)
        self.calls.append(("infer", model, version, body, content_type, verb, timeout_s))
        self.sent.append((model, version, body, content_type, timeout_s))
        if self.failure is not None:
            raise self.failure
        if self.answer is not None:
            return self.answer
        count = instances_of(body, verb)
        values = [[0.25, 0.75]] * count if self.kind == "vision" else [[1.5]] * count
        answered_by = version or versions[0].version
        return Answer(json.dumps({"predictions": values}).encode(), answered_by, str(self.described["task"]))
