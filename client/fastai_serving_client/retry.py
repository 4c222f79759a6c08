"""Tries with exponential backoff, obeying a server's Retry-After, cut short when the run is stopping."""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import defaults

T = TypeVar("T")


class Retryable(Exception):
    """A transient failure (503, 504, a dropped connection): the same call may succeed later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


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


DEFAULT_BACKOFF = Backoff()


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def with_retries(call: Callable[[], T], backoff: Backoff, stopping: threading.Event) -> T:
    """`call()` until it returns or raises something other than `Retryable`, at most `backoff.tries` times."""
    for attempt in range(1, backoff.tries + 1):
        if stopping.is_set():
            raise Stopped()
        try:
            return call()
        except Retryable as failure:
            if attempt == backoff.tries:
                raise GaveUp(failure.reason, attempt) from failure
            if stopping.wait(backoff.delay_s(attempt, failure.retry_after_s)):
                raise Stopped() from failure
    raise AssertionError("unreachable: tries is at least 1")
