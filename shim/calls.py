"""What a front asks the service, and what it gets back: typed, the same for every front and protocol.

A front parses its wire format into these, calls one `Service` verb, and encodes what comes back.
A prediction's instances travel as a `Payload`: each protocol's own (the TF Serving JSON body, the
gRPC front's images, the v2 tensors), which knows how to check itself against the model's
description before inference and what body the handler reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from fastai_serving.contract.vocabulary import VISION


@dataclass(frozen=True)
class ModelRef:
    """Which model and version a request names: "" for the default model (/analyze, a ModelSpec without a name)
    and the default version; a version is TF Serving's number, as the client wrote it ("2")."""

    name: str = ""
    version: str = ""


@dataclass(frozen=True)
class Description:
    """A model version as the fronts describe it: its number, every version's number, and the handler's own
    description (task, kind, classes in output order, inputs, precision)."""

    model: str
    version: str  # TF Serving's number of the version described
    versions: tuple[str, ...]  # every registered version's number
    described: Mapping[str, Any] = field(default_factory=dict)
    torchserve_version: str = ""  # the version as TorchServe names it ("2.0")

    @property
    def task(self) -> str:
        return str(self.described.get("task", ""))

    @property
    def kind(self) -> str:
        return str(self.described.get("kind", VISION))


class Payload(Protocol):
    """A prediction's instances as one protocol carries them."""

    # Whether only a handler as new as this front reads its body (the images body, the v2 fronts' bodies):
    # an archive older than that is refused, asking for a rebuild.
    needs_current_handler: bool

    @property
    def instances(self) -> int: ...

    def check(self, description: Description) -> None:
        """Refuse (BadInput) what this model cannot answer, before any inference."""

    def upstream(self, description: Description) -> tuple[bytes, str]:
        """The body the handler reads, and its content type."""


@dataclass(frozen=True)
class PredictCall:
    """One prediction: the model, the TF Serving verb (v2's infer is predict), the instances, the caller's deadline."""

    model: ModelRef
    verb: str
    payload: Payload
    timeout_s: float | None = None  # the client's own deadline, in seconds from now (gRPC's, v2's `timeout`)


@dataclass(frozen=True)
class Prediction:
    """The handler's answer to a call: the model, the description of the version that answered, its JSON."""

    model: str
    description: Description
    body: bytes  # as the handler wrote it (the REST front passes it on)

    @property
    def version(self) -> str:
        return self.description.version

    @cached_property
    def answers(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(frozen=True)
class VersionStatus:
    version: str  # TF Serving's number
    ready: bool


@dataclass(frozen=True)
class ModelStatus:
    model: str
    versions: tuple[VersionStatus, ...]

    @property
    def ready(self) -> bool:
        """Whether the model can serve: a version of it has a ready worker."""
        return any(status.ready for status in self.versions)


@dataclass(frozen=True)
class Readiness:
    """The server's readiness: every model it waits for has a ready worker, and it is not shutting down."""

    ready: bool
    draining: bool
    models: dict[str, bool]
    error: str = ""  # why readiness could not be asked (TorchServe unreachable), when it could not
