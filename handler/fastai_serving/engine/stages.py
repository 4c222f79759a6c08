"""Where a batch's time went, stage by stage: decode, the Learner's transforms, the forward pass, encoding.

The handler times its verbs around the core (decode: reading and decoding every request; encode: writing
the answers); the forward passes are timed by hooks on the model, so every path (the fast paths, fastai's
own `get_preds`, tabular, text, compiled models) is measured the same way without a clock in each. The
transforms are the rest of the inference step: the batch built from the decoded inputs (fastai's item and
batch transforms or the fast path's), and the outputs' activation and decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

DECODE, TRANSFORMS, FORWARD, ENCODE = "decode", "transforms", "forward", "encode"
STAGES = (DECODE, TRANSFORMS, FORWARD, ENCODE)


@dataclass(frozen=True)
class StageSeconds:
    """One batch's seconds in each stage."""

    decode: float
    transforms: float
    forward: float
    encode: float

    def items(self) -> list[tuple[str, float]]:
        return [(DECODE, self.decode), (TRANSFORMS, self.transforms), (FORWARD, self.forward), (ENCODE, self.encode)]


@dataclass(frozen=True)
class BatchTimes:
    """When a batch's steps ended, in nanoseconds since the epoch, and its forward passes' total."""

    started_ns: int
    decoded_ns: int  # preprocess done
    inferred_ns: int  # inference done
    answered_ns: int  # postprocess done
    forward_ns: int

    def stages(self) -> StageSeconds:
        inference = self.inferred_ns - self.decoded_ns
        return StageSeconds(
            decode=(self.decoded_ns - self.started_ns) / 1e9,
            transforms=max(0, inference - self.forward_ns) / 1e9,
            forward=self.forward_ns / 1e9,
            encode=(self.answered_ns - self.inferred_ns) / 1e9,
        )

    def spans(self) -> list[tuple[str, int, int]]:
        """(stage, start, end) per stage, one after the other: the forward passes' sum drawn after the transforms
        (fastai's DataLoader interleaves them, a batch at a time)."""
        forward_from = max(self.decoded_ns, self.inferred_ns - self.forward_ns)
        return [
            (DECODE, self.started_ns, self.decoded_ns),
            (TRANSFORMS, self.decoded_ns, forward_from),
            (FORWARD, forward_from, self.inferred_ns),
            (ENCODE, self.inferred_ns, self.answered_ns),
        ]


class ForwardClock:
    """The seconds a model's forward passes took since the last `take()`: a pre- and a post-hook on the module.

    On a GPU the post-hook waits for the device, so the time is the pass's and not its launch's (the outputs are
    copied to the CPU right after anyway).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device, self.seconds, self._started = device, 0.0, 0.0
        self._hooks = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _pre(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._started
