"""Admission before the queue: refuse at once what cannot be answered in time, and keep the queue short.

TorchServe computes every job it has queued, whether or not its client still waits, and admits up to
its queue's size however long each will wait. So the fronts decide first. Each model's pace is known from
the handler's own answers (its batches' seconds per instance, and the instances one forward pass takes),
and what is ahead of a new request is counted: every instance the fronts have sent upstream and not yet
had answered. Both are kept in a table every front process maps (`FrontsTable`), so a request on any
front sees them all. A request is refused, with a hint of when to try again, when:
- the wait ahead of it has stood past a target for a while: the target is enough to keep the workers
  busy (two forward passes, and at least a second) and no more, as CoDel and "Fail at Scale" keep a
  queue short, so excess load is refused in milliseconds and a retry finds room, instead of every
  request waiting out its client's patience. As in CoDel, a burst is not a standing queue: the wait
  must have stayed over the target for `QUEUE_INTERVAL_S` before anything is refused for it (then
  refusals go on while it is over, until it has stayed under for as long); or
- it has a deadline (gRPC's, v2's `timeout`, REST's X-Request-Timeout) that it cannot meet: its answer
  comes when its TorchServe batch is done, and that batch may hold as much again as was ahead of it.
Until a model has answered once, nothing is refused. Health and readiness are never refused: a readiness
that failed under overload would only move the storm to the next replica.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil

from fastai_serving import defaults
from fastai_serving.contract.errors import Overloaded

ROWS = 1024  # (front process, model) pairs the table holds
ROW = np.dtype(
    [("model", "<u8"), ("pid", "<i8"), ("in_flight", "<i8"), ("batch_s", "<f8"), ("batch_n", "<f8"),
     ("forward", "<i8"), ("paced_at", "<f8")]
)  # fmt: skip
LIVENESS_EVERY_S = 1.0  # how often a process drops the rows of front processes that are gone
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 0.05, 30.0  # the hint a refusal carries, bounded
BATCH_SPREAD = 2.0  # a request's TorchServe batch may hold as much again as was ahead of it


def model_key(model: str) -> int:
    return int.from_bytes(hashlib.blake2b(model.encode(), digest_size=8).digest(), "little") or 1


@dataclass(frozen=True)
class Pace:
    """How fast a model answers: seconds per instance on one worker, and the instances of one forward pass."""

    per_instance_s: float
    forward_instances: int


class FrontsTable:
    """Per model, over every front process: instances sent upstream and not yet answered, and the model's pace.

    Each process owns rows of a shared file (one per model it sends to) and alone writes them; readers sum the
    live processes' counts and take the latest pace. `path` None: this process alone (a front run on its own,
    the tests).
    """

    def __init__(self, path: str | None = None) -> None:
        size = ROWS * ROW.itemsize
        self._file = None
        if path:
            self._file = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._file).st_size < size:
                os.ftruncate(self._file, size)
        self._map = mmap.mmap(self._file if self._file is not None else -1, size)
        self.rows = np.frombuffer(self._map, dtype=ROW)
        self.pid = os.getpid()
        self._own: dict[int, int] = {}  # model key -> this process's row
        self._lock = threading.Lock()
        self._checked = 0.0

    def add(self, model: str, instances: int) -> None:
        """`instances` more (or, negative, fewer) of this process's instances in flight to `model`."""
        with self._lock:
            self.rows["in_flight"][self._row(model)] += instances

    def observe(self, model: str, batch_seconds: float, batch_instances: int, forward_instances: int) -> None:
        """A batch's seconds for its instances, as the handler said: the model's pace, averaged as it moves.

        The seconds and the instances are averaged apart and the pace is their ratio: a batch's fixed cost is
        spread over the instances batches hold, where an average of each batch's seconds per instance would
        count a lone instance's batch as fully as a full one and make the model look slower than it serves."""
        with self._lock:
            row = self._row(model)
            latest = self._latest(model)
            if latest is None:
                seconds, instances = batch_seconds, float(batch_instances)
            else:
                seconds, instances = float(latest["batch_s"]), float(latest["batch_n"])
                seconds += defaults.PACE_EWMA * (batch_seconds - seconds)
                instances += defaults.PACE_EWMA * (batch_instances - instances)
            self.rows["batch_s"][row], self.rows["batch_n"][row] = seconds, instances
            self.rows["forward"][row], self.rows["paced_at"][row] = forward_instances, time.time()

    def count(self, model: str) -> int:
        """Every live front process's instances in flight to `model`."""
        return int(self.rows["in_flight"][self._rows_of(model)].sum())

    def pace(self, model: str) -> Pace | None:
        """The model's latest pace, from whichever front process heard it last; None before any answer."""
        latest = self._latest(model)
        if latest is None:
            return None
        return Pace(float(latest["batch_s"]) / float(latest["batch_n"]), int(latest["forward"]))

    def _latest(self, model: str) -> np.void | None:
        rows = self.rows[self._rows_of(model)]
        rows = rows[rows["paced_at"] > 0]
        return rows[np.argmax(rows["paced_at"])] if len(rows) else None

    def _rows_of(self, model: str) -> np.ndarray:
        now = time.monotonic()
        if now - self._checked > LIVENESS_EVERY_S:
            self._checked = now
            self._forget_the_gone()
        return (self.rows["model"] == model_key(model)) & (self.rows["pid"] != 0)

    def _row(self, model: str) -> int:
        """This process's row for `model` (called under the process's lock), claimed on first use."""
        key = model_key(model)
        row = self._own.get(key)
        if row is None or self.rows["pid"][row] != self.pid:
            with _FileLock(self._file):
                free = np.flatnonzero(self.rows["pid"] == 0)
                if not len(free):
                    raise RuntimeError(f"the fronts' table is full ({ROWS} rows)")
                row = self._own[key] = int(free[0])
                self.rows[row] = (key, self.pid, 0, 0.0, 0.0, 0, 0.0)
        return row

    def _forget_the_gone(self) -> None:
        """Free the rows of front processes that ended (a restarted worker leaves its counts behind)."""
        gone = [pid for pid in set(self.rows["pid"][self.rows["pid"] != 0].tolist()) if not psutil.pid_exists(pid)]
        if gone:
            with _FileLock(self._file):
                self.rows[np.isin(self.rows["pid"], gone)] = (0, 0, 0, 0.0, 0.0, 0, 0.0)


class _FileLock:
    """The table's file, locked across processes (only to claim or free rows); nothing to lock in one process."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def refusal(
    pace: Pace | None, ahead: int, instances: int, workers: int, timeout_s: float | None, target_s: float
) -> tuple[str, float] | None:
    """Why a request of `instances` is refused and how long until it could be admitted, or None: admit it.

    `ahead`: instances in flight before it; `timeout_s`: its client's deadline from now, if it has one;
    `target_s`: the wait kept below (0: two forward passes, at least `QUEUE_TARGET_MIN_S`).
    """
    if pace is None:
        return None  # no answer yet: nothing known to refuse by
    seconds_per_instance = pace.per_instance_s / max(1, workers)  # the model's, over all its workers
    waiting_s = ahead * seconds_per_instance
    target = target_s or max(defaults.QUEUE_TARGET_MIN_S, 2 * pace.forward_instances * pace.per_instance_s)
    if waiting_s > target:
        return "queue", _hint(waiting_s - target)
    if timeout_s is not None:
        late_by = BATCH_SPREAD * (ahead + instances) * seconds_per_instance - timeout_s
        if late_by > 0:
            return "deadline", _hint(late_by / BATCH_SPREAD)
    return None


def _hint(seconds: float) -> float:
    return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, seconds))


@dataclass
class StandingQueue:
    """Whether a model's queue stands over its target (CoDel's test), from each admission's look at it.

    Over the target for `interval_s` without a look under it: standing, and requests are refused for it while
    it is over. Under it for `interval_s`: no longer standing, and a new burst is let in whole again. Looks
    further apart than `interval_s` start afresh: what the queue did between them was not seen."""

    interval_s: float = defaults.QUEUE_INTERVAL_S
    over_since: float | None = None
    under_since: float | None = None
    standing: bool = False
    looked_at: float | None = None

    def refuses(self, over: bool, now: float) -> bool:
        """Whether a request that finds the queue `over` its target (or not) at `now` is refused for it."""
        if self.looked_at is not None and now - self.looked_at > self.interval_s:
            self.over_since = self.under_since = None
            self.standing = False
        self.looked_at = now
        if over:
            self.under_since = None
            if self.over_since is None:
                self.over_since = now
            self.standing = self.standing or now - self.over_since >= self.interval_s
            return self.standing
        self.over_since = None
        if self.under_since is None:
            self.under_since = now
        if now - self.under_since >= self.interval_s:
            self.standing = False
        return False


class Admission:
    """The fronts' admission of predictions: `admit` before the upstream call, `done` and `answered` after it."""

    def __init__(
        self,
        table: FrontsTable,
        target_s: float,
        interval_s: float = defaults.QUEUE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table, self.target_s, self.interval_s, self.clock = table, target_s, interval_s, clock
        self._queues: dict[str, StandingQueue] = {}
        self._workers: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, model: str, instances: int, workers: int, timeout_s: float | None) -> None:
        """Count `instances` in flight to `model`, or refuse them (`Overloaded`, with when to retry)."""
        pace, ahead = self.table.pace(model), self.table.count(model)
        refused = refusal(pace, ahead, instances, workers, None, self.target_s)
        if not self._look(model, workers, refused is not None):
            refused = None  # a burst, not (yet) a standing queue
        if refused is None and timeout_s is not None:
            refused = refusal(pace, ahead, instances, workers, timeout_s, float("inf"))  # its deadline alone
        if refused is not None:
            reason, retry_after_s = refused
            what = "its deadline cannot be met" if reason == "deadline" else "its queue is as long as keeps it busy"
            raise Overloaded(
                f"model {model!r} is busy: {what}; refused before queueing, retry in {retry_after_s:.2f} s",
                retry_after_s,
                reason,
            )
        self.table.add(model, instances)

    def done(self, model: str, instances: int) -> None:
        """`instances` are no longer in flight (answered, failed or given up)."""
        self.table.add(model, -instances)
        pace, ahead = self.table.pace(model), self.table.count(model)
        self._look(model, None, refusal(pace, ahead, 0, self._workers.get(model, 1), None, self.target_s) is not None)

    def _look(self, model: str, workers: int | None, over: bool) -> bool:
        """What this process saw of `model`'s queue, and whether a request is refused for it."""
        with self._lock:
            if workers is not None:
                self._workers[model] = workers
            queue = self._queues.setdefault(model, StandingQueue(self.interval_s))
            return queue.refuses(over, self.clock())

    def answered(self, model: str, batch_seconds: float, batch_instances: int, forward_instances: int) -> None:
        """What the handler said of the batch that answered: the model's pace."""
        if batch_instances > 0 and batch_seconds > 0:
            self.table.observe(model, batch_seconds, batch_instances, forward_instances)
