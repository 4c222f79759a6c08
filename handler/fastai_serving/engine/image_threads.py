"""The worker's image threads: a batch's images decoded and resized in parallel, one task per thread.

PIL and torchvision release the GIL while they decode and resize, so a few threads use every
core. Each task is a contiguous slice of the batch rather than one image: a task's hand-off
(its future, the queue, the condition the caller waits on) costs GIL time, and per image it was
as much as base64 and JSON together (py-spy --gil on a served near-free model: docs/pipeline.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..defaults import DECODE_THREADS

Item = TypeVar("Item")
Result = TypeVar("Result")

# Decoding (preprocess) and resizing (inference) never run at once in a worker: one pool serves both.
_pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="images")


def map_slices(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`function` over `items`, in order, on up to DECODE_THREADS threads, each taking one contiguous slice."""
    if len(items) <= 1:
        return [function(item) for item in items]
    count = min(DECODE_THREADS, len(items))
    bounds = [len(items) * part // count for part in range(count + 1)]
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    slices = _pool.map(lambda span: [function(item) for item in items[span[0] : span[1]]], spans)
    return [result for part in slices for result in part]
