"""Tries with exponential backoff, obeying a server's Retry-After, cut short when the run is stopping.

A refusal (the server's admission control: busy now, come back after its hint) is not a failed try: it is
sent again after the hint as often as it takes, and told to the concurrency controller, which sends less.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import defaults
from .concurrency import UNOBSERVED, Observer

T = TypeVar("T")


class Retryable(Exception):
    """A transient failure (503, 504, a dropped connection): the same call may succeed later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Refused(Retryable):
    """The server refused this request for now (REST 429, gRPC RESOURCE_EXHAUSTED): sent again after its hint,
    never counted as a try."""


class GaveUp(Exception):
    """Every try failed with a transient failure; `reason` is the last one's."""

    def __init__(self, reason: str, tries: int) -> None:
        super().__init__(f"{reason} (after {tries} tries)")
        self.reason = reason
        self.tries = tries


class Stopped(Exception):
    """The run is stopping (Ctrl-C, SIGTERM, a fatal error elsewhere): this call was abandoned, nothing recorded."""


@dataclass(frozen=True)
class Backoff:
    tries: int = defaults.RETRIES
    first_s: float = defaults.BACKOFF_S
    max_s: float = defaults.BACKOFF_MAX_S

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait after failed try number `attempt` (from 1): the server's Retry-After if it gave one."""
        if retry_after_s is not None:
            return max(0.0, min(retry_after_s, defaults.RETRY_AFTER_MAX_S))
        wait = min(self.max_s, self.first_s * 2 ** (attempt - 1))
        return wait * random.uniform(0.8, 1.2)  # jitter: many clients restarted together do not retry in step

    def refusal_delay_s(self, refusals: int, retry_after_s: float | None) -> float:
        """The wait after this request's `refusals`-th refusal: the server's hint, a little later (every request it
        refused in one moment must not come back in the same one), else the backoff."""
        if retry_after_s is None:
            return self.delay_s(refusals)
        return min(retry_after_s, defaults.RETRY_AFTER_MAX_S) * random.uniform(1.0, 1.25)


DEFAULT_BACKOFF = Backoff()


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, fractional too, or an HTTP date); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def with_retries(
    call: Callable[[], T], backoff: Backoff, stopping: threading.Event, observer: Observer = UNOBSERVED
) -> T:
    """`call()` until it returns or raises something other than `Retryable`, at most `backoff.tries` times
    (refusals not counted); `observer` hears how each attempt went."""
    failures = refusals = 0
    while True:
        if stopping.is_set():
            raise Stopped()
        attempt = observer.sending(stopping)
        if attempt is None and stopping.is_set():  # stopped while waiting for room under the limit
            raise Stopped()
        try:
            result = call()
        except Refused as refusal:
            observer.refused(attempt)
            refusals += 1
            wait_s, cause = backoff.refusal_delay_s(refusals, refusal.retry_after_s), refusal
        except Retryable as failure:
            observer.overloaded(attempt)
            failures += 1
            if failures >= backoff.tries:
                raise GaveUp(failure.reason, failures) from failure
            wait_s, cause = backoff.delay_s(failures, failure.retry_after_s), failure
        except Exception:
            observer.ended(attempt)  # an input refused, an answer that is not TF Serving's: no measure of the load
            raise
        else:
            observer.answered(attempt)
            return result
        if stopping.wait(wait_s):
            raise Stopped() from cause
