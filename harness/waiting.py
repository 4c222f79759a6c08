"""Waiting on an event, never a fixed sleep: the tests' one helper for it."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 120, every_s: float = 0.1) -> None:
    """Until `condition()` holds, looking again every `every_s`; past a generous overall timeout, a failure naming `what`."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, f"waited {timeout_s} s for {what}"
        time.sleep(every_s)
