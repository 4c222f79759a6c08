"""When a request stops being worth answering: its client's deadline, or the model's longest wait in the queue.

The fronts send each request with the time they sent it and, when the client gave one, its deadline
(contract/upstream.py). A request whose deadline has passed by the time its batch is formed is
answered at once, without decoding or inference, so its place in the batch goes to a request someone
still waits for. Times are seconds since the epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import Failure, ServingError


@dataclass(frozen=True)
class Deadline:
    at: float  # seconds since the epoch
    why: str  # what set it, for the answer's message


def deadline_of(sent_at: str | None, client_deadline: str | None, max_queue_s: float) -> Deadline | None:
    """The earlier of the client's deadline and the model's longest wait from the moment the front sent it;
    None when neither is known (a request sent straight to TorchServe, say). Unreadable values count as absent."""
    candidates = []
    client = _seconds(client_deadline)
    if client is not None:
        candidates.append(Deadline(client, "the client's deadline"))
    sent = _seconds(sent_at)
    if sent is not None and max_queue_s > 0:
        candidates.append(Deadline(sent + max_queue_s, f"the model's longest wait in the queue ({max_queue_s:g} s)"))
    return min(candidates, key=lambda deadline: deadline.at) if candidates else None


def expired(deadline: Deadline | None, now: float) -> ServingError | None:
    """The answer of a request whose deadline passed while it waited, or None while it is still wanted."""
    if deadline is None or now < deadline.at:
        return None
    late = now - deadline.at
    return ServingError(
        f"not predicted: {deadline.why} passed {late:.2f} s before its batch started (the server is busier than the "
        "deadline allows; send it again, or with a longer deadline)",
        Failure.TIMEOUT,
    )


def _seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
