"""What the service keeps of TorchServe's answers: values by key, never loaded twice at once.

A value a whole storm of requests needs at the same moment (a model's description, its versions)
is loaded by one of them while the others wait for that load; once a value is older than its
time to live it is still served while one background refresh loads the new one. So however many
requests arrive together, TorchServe is asked once per key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")


@dataclass
class _Flight:
    """One load in progress: its waiters, then its value or its error."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


@dataclass
class _Entry:
    value: Any = None
    loaded_at: float | None = None  # None: no value yet
    loading: _Flight | None = None


class SingleFlight(Generic[Value]):
    """A thread-safe cache whose values go stale `ttl_s` seconds after they were loaded; one load per key at a time."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Value], fresh: bool = False) -> Value:
        """The value of `key`: cached; while stale, cached and refreshed in the background; else `load()`ed once
        for every caller waiting on it (`fresh`: a value loaded from now on, as when a miss suggests a change)."""
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            if entry.loaded_at is not None and not fresh:
                if self.clock() - entry.loaded_at >= self.ttl_s and entry.loading is None:
                    entry.loading = _Flight()
                    threading.Thread(target=self._load, args=(key, load, entry.loading), daemon=True).start()
                return entry.value
            flight, mine = entry.loading, entry.loading is None
            if mine:
                flight = entry.loading = _Flight()
        if mine:
            self._load(key, load, flight)
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value

    def _load(self, key: Hashable, load: Callable[[], Value], flight: _Flight) -> None:
        started = self.clock()
        try:
            flight.value = load()
        except BaseException as error:  # every waiter gets it; a stale value stays for the next caller
            flight.error = error
        with self._lock:
            entry = self._entries[key]
            if flight.error is None:
                entry.value, entry.loaded_at = flight.value, started
            entry.loading = None
        flight.done.set()
