"""A fake of `fastai_serving_shim.torchserve.TorchServeClient`'s model table, for the in-process tests of one front.

It answers what TorchServe's management API would (models, their versions, what each
describes) from a table, and records every call. Each front's tests add the `predict`
their front needs (tests/test_shim_app.py, tests/test_grpc_app.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastai_serving_shim.errors import Failure, ServiceError

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
