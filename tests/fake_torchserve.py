"""A fake of `fastai_serving_shim.torchserve.TorchServeClient`'s model table, for the in-process tests of one front.

It answers what TorchServe's management API would (models, their versions, what each
describes) from a table, and records every call. Each front's tests add the `predict`
their front needs (tests/test_shim_app.py, tests/test_grpc_app.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastai_serving.bodies import read_body
from fastai_serving_shim.errors import Failure, ServiceError
from fastai_serving_shim.torchserve import UpstreamAnswer

DESCRIBED = {
    "classification": {"task": "classification", "classes": ["cat", "dog"], "input": "image", "precision": "fp32"},
    "multilabel_classification": {"task": "multilabel_classification", "classes": ["a", "b"], "input": "image"},
    "regression": {"task": "regression", "classes": [], "input": "image", "precision": "fp32"},
    "segmentation": {"task": "segmentation", "classes": ["background", "road"], "input": "image"},
}


def version(number: str, ready: bool = True) -> dict:
    """One version as TorchServe's management API describes it, with one worker."""
    return {"modelVersion": number, "workers": [{"status": "READY" if ready else "UNLOADING"}]}


@dataclass
class ModelTable:
    """TorchServe's models from a table: model -> its versions' descriptions, every model of `task`. Records each call."""

    served: dict[str, list[dict]] = field(default_factory=lambda: {"digits": [version("1.0")]})
    task: str = "classification"
    calls: list[tuple] = field(default_factory=list)

    def models(self) -> list[str]:
        self.calls.append(("models",))
        return list(self.served)

    def versions(self, model: str, version: str | None = "all") -> list[dict]:
        self.calls.append(("versions", model, version))
        if model not in self.served:
            raise ServiceError(Failure.NOT_FOUND, f"model {model!r} not found")
        return self.served[model] if version == "all" else self.served[model][:1]

    def described(self, model: str, version: str) -> dict:
        self.calls.append(("described", model, version))
        return DESCRIBED[self.task]

    def count(self, kind: str) -> int:
        return sum(call[0] == kind for call in self.calls)


# --- The v2 fronts' tests (tests/test_v2_app.py, tests/test_v2_grpc_app.py) ------------------------

COLUMNS = [
    {"name": "colour", "kind": "categorical", "type": "string", "categories": ["blue", "red"], "nullable": True},
    {"name": "weight", "kind": "continuous", "type": "number", "nullable": True},
]
V2_DESCRIBED = {
    "vision": {"task": "classification", "kind": "vision", "classes": ["cat", "dog"], "input": "image"},
    "tabular": {"task": "regression", "kind": "tabular", "classes": [], "targets": ["price"], "inputs": COLUMNS},
}


@dataclass
class V2FakeTorchServe(ModelTable):
    """The model table of a v2 front's tests; each prediction answered with one [0.25, 0.75] (tabular: [1.5], or
    `answer`) per instance sent; `sent` records (model, version, body, content type, timeout) of each."""

    kind: str = "vision"
    answer: UpstreamAnswer | None = None
    sent: list[tuple] = field(default_factory=list)

    def described(self, model: str, version: str) -> dict:
        self.calls.append(("described", model, version))
        if model not in self.served:
            raise ServiceError(Failure.NOT_FOUND, f"model {model!r} not found")
        return V2_DESCRIBED[self.kind]

    def predict(self, model, version, body, verb, content_type="application/json", timeout_s=None) -> UpstreamAnswer:
        self.sent.append((model, version, body, content_type, timeout_s))
        if self.answer is not None:
            return self.answer
        count = len(read_body(body).instances)
        values = [[0.25, 0.75]] * count if self.kind == "vision" else [[1.5]] * count
        return UpstreamAnswer(200, json.dumps({"predictions": values}).encode(), "1.0", V2_DESCRIBED[self.kind]["task"])
