"""A batch's spans, when traces are on (fastai_serving.tracing): one span for the batch, and for each request in
it a `handler` span under the front's span (the `traceparent` the front sent), with its wait for the batch and
the batch's stages (decode, transforms, forward, encode) as children, each linked to the batch's span: a request's
trace shows the batch it ran in, and the batch the requests that shared it.

Spans are written after the batch is answered, from the times it recorded, so tracing adds nothing to the
time a request waits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import tracing
from .engine.stages import BatchTimes


def trace_batch(model: str, headers: Sequence[Mapping[str, str]], request_ids: Sequence[str],
                queue_seconds: Sequence[float | None], times: BatchTimes, instances: int) -> None:  # fmt: skip
    batch = tracing.record("batch", None, times.started_ns, times.answered_ns, model=model,
                           requests=len(headers), instances=instances)  # fmt: skip
    if batch is None:
        return
    _, batch_span = batch
    for carrier, request_id, waited in zip(headers, request_ids, queue_seconds, strict=True):
        parent = tracing.parent_of(carrier)
        sent_ns = times.started_ns - int(waited * 1e9) if waited is not None else times.started_ns
        handled, _ = tracing.record("handler", parent, sent_ns, times.answered_ns, (batch_span,), model=model,
                                    request_id=request_id)  # fmt: skip
        if waited is not None:
            tracing.record("queue", handled, sent_ns, times.started_ns, (batch_span,), model=model)
        for stage, start_ns, end_ns in times.spans():
            tracing.record(stage, handled, start_ns, end_ns, (batch_span,), model=model, instances=instances)
