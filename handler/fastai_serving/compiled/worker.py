"""torch.compile for a served Learner: compiled and warmed at start, so that no request ever waits for a compile.

A compiled graph is specialised to its input's shape, and the handler's forward passes carry
from one image to `max_batch`. Each batch is padded up to the next of a few sizes (powers of
two up to `max_batch`), every one of them compiled and run once at start (docs/compile.md says why padding rather
than a dynamic batch dimension). Whatever fails while
compiling leaves the Learner eager, and says why: a model is never left unserved.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..contract.vocabulary import VISION
from ..engine.learner import ServedLearner, resized_to
from ..engine.predict import predict_images

logger = logging.getLogger(__name__)

# Where inductor keeps what it compiled: a restarted worker (or server) on this machine finds it there.
CACHE_DIR_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


@dataclass
class CompileReport:
    """What became of a compile: done (with its time and batch sizes), or not, and why.

    `mode`: "worker" (torch.compile in the worker), "aot" (the archive's AOTInductor package) or "eager"
    (an AOT archive's worker that fell back); for AOT, the machine the package was built for and this one.
    """

    compiled: bool
    seconds: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    error: str = ""
    mode: str = "worker"
    built_for: dict[str, str] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For the model's metadata; `compiled_graphs` counts every graph compiled so far, so a request that compiled shows."""
        described: dict[str, Any] = {"compiled": self.compiled}
        if self.compiled:
            described |= {
                "compile_seconds": round(self.seconds if self.mode == "worker" else 0.0, 1),
                "compiled_batch_sizes": list(self.batch_sizes),  # aot: the smallest and largest batch
                "compiled_graphs": compiled_graphs(),
            }
        if self.error:
            described["compile_error"] = self.error
        report: dict[str, Any] = {"mode": self.mode if self.compiled or self.mode != "worker" else "eager"}
        if self.mode in ("aot", "eager"):
            report |= {"built_for": self.built_for, "this_machine": self.machine}
        if self.compiled and self.mode == "aot":
            report["load_seconds"] = round(self.seconds, 2)  # the package's load and warm-up in this worker
        if self.error:
            report["fallback"] = self.error
        described["compile"] = report
        return described


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The sizes a batch is padded to: powers of two below `max_batch`, and `max_batch`."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


class PaddedModel(nn.Module):
    """Runs `compiled` on inputs padded along the batch dimension to one of `sizes`, cuts the outputs back,
    and applies `tail` (the model's own last layer, when it is left out of the compiled graph)."""

    def __init__(self, eager: nn.Module, compiled: nn.Module, sizes: Sequence[int], tail: nn.Module | None) -> None:
        super().__init__()
        self.eager = eager  # kept for the fallback and for fastai's own uses of the module
        self.compiled = compiled
        self.sizes = tuple(sizes)
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, *inputs: Any) -> Any:
        count = next(tensor.shape[0] for tensor in inputs if isinstance(tensor, torch.Tensor))
        size = next((size for size in self.sizes if size >= count), None)
        if size is None:  # larger than any warmed size: cannot happen from the handler, which cuts at max_batch
            return self.eager(*inputs)
        return self.tail(_cut(self.compiled(*(_pad(tensor, size) for tensor in inputs)), count))


def split_fastai_cast(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The model to compile and the layer to run after it: a last `ToTensorBase` (DynamicUnet ends in one) stays eager.

    dynamo recurses without end through fastai's patched `Tensor.as_subclass` when a graph
    returns fastai's `TensorBase`; the cast is free, so it runs outside the graph. The copy
    shares every parameter with `model`.
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not layers or type(layers[-1]).__name__ != "ToTensorBase":
        return model, None
    body = copy.copy(model)
    body._modules = dict(model._modules)  # the copy's own module table, so the original keeps its layers
    body.layers = nn.ModuleList(list(layers)[:-1])
    return body, layers[-1]


def _pad(value: Any, size: int) -> Any:
    """The batch padded to `size` rows by repeating its last row (real data: no NaN or overflow in padding)."""
    if not isinstance(value, torch.Tensor) or value.shape[0] >= size:
        return value
    return torch.cat([value, value[-1:].expand(size - value.shape[0], *value.shape[1:])])


def _cut(value: Any, count: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[:count]
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(item, count) for item in value)
    return value


def sample_image(learn: Any) -> Image.Image | None:
    """An image of the size the Learner's pipeline resizes every input to, or None if it keeps inputs' own sizes.

    The warm-up sends it through the same path as a request's images; without a fixed size, each
    new image size would compile on a request.
    """
    size = resized_to(learn)
    return Image.new("RGB", (size[1], size[0]), "gray") if size else None


def compile_learner(served: ServedLearner, max_batch: int) -> CompileReport:
    """Compile the Learner's model and run a request's path once at every padded size, in its serving precision.

    On success the Learner's model is the padded compiled one; on any failure it stays eager.
    """
    os.environ.setdefault(CACHE_DIR_VARIABLE, str(default_cache_dir()))
    if served.kind != VISION:
        return CompileReport(
            compiled=False, error=f"--compile serves vision Learners; this {served.kind} Learner runs eager"
        )
    learn, began = served.learn, time.perf_counter()
    eager, sizes = learn.model, batch_sizes(max_batch)
    image = sample_image(learn)
    if image is None:
        return CompileReport(
            compiled=False,
            error="the Learner keeps each input's own size (no Resize), so it cannot be compiled ahead of requests",
        )
    try:
        body, tail = split_fastai_cast(eager)
        compiled = torch.compile(body, mode=compile_mode(served.device), dynamic=False)
        learn.model = PaddedModel(eager, compiled, sizes, tail)
        for size in sizes:
            predict_images(served, [image] * size, max_batch)
    except Exception as error:  # inductor raises many kinds; the model must stay served
        logger.warning("torch.compile failed, serving eager: %s: %s", type(error).__name__, error)
        learn.model = eager
        return CompileReport(compiled=False, error=f"{type(error).__name__}: {str(error)[:300]}")
    seconds = time.perf_counter() - began
    logger.info("fastai-serving compiled the model for batch sizes %s in %.1f s", sizes, seconds)
    return CompileReport(compiled=True, seconds=seconds, batch_sizes=sizes)


def compile_mode(device: torch.device) -> str | None:
    """inductor's default on a CPU; on a GPU, CUDA graphs too ("reduce-overhead"): a padded batch has a fixed shape."""
    return "reduce-overhead" if device.type == "cuda" else None


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "fastai-serving-inductor"


def compiled_graphs() -> int:
    """How many graphs torch has compiled in this process (a request that compiles would raise it)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
