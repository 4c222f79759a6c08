"""How many requests predict-batch keeps in flight: found from what the server answers, unless --concurrency fixes it.

A server's best concurrency is unknown and changes (a bigger model, another replica, other clients), and a
batching server hides it: more requests in flight make its batches bigger, so both its latency and its
answers per second rise until it is busy, and past that only latency rises. The controller measures the
answers per second at each limit (a window: a round of the limit's own requests to settle, then at least
WINDOW_ROUNDS rounds and WINDOW_ANSWERS answers from requests sent at that limit, counted by Little's law:
requests in flight ÷ latency; a window in which the run kept under FILLED of the limit in flight measures
the run, not the server, and decides nothing), climbs while more in flight brings more of them, and backs
off when the server says it is over:

- **climb**: from the lower bound it doubles the limit while each doubling raises the answers per second
  by GAIN or more, and stops at the first that did not: it keeps that level unless it lost more than
  CLIMB_KEEP (on a batching server a small gain is what separates nearly busy from busy), else goes back.
- **hold**: it keeps the limit, and every PROBE_EVERY windows tries a step of PROBE_STEP, up and down in
  turn, then a window back at the held limit: the step is judged against the mean of the windows before
  and after it, so a load that drifts meanwhile does not decide. Up, GAIN more answers per second start a
  climb from there (a server that grew, or has room again after refusing); down, answers within
  DOWN_TOLERANCE keep the lower limit (as much done with a shorter queue at the server).
- **back off**: a refusal (429, RESOURCE_EXHAUSTED: the server's admission control saying it is full)
  multiplies the limit by REFUSAL_BACKOFF and probes again PROBE_SOON windows later, so a brief overload
  costs little; a timeout, a 503 or 504, a dropped connection by OVERLOAD_BACKOFF; a median latency above
  MAX_LATENCY_RATIO times the fastest answer seen by REFUSAL_BACKOFF. One decrease per round trip: a
  signal from a request sent before the last change was already answered by it. A refused request is
  sent again after its hint only when there is room under the limit, so the limit holds for every try.

It is AIMD (additive increase, multiplicative decrease) on the server's own signals, with the increase
gated by the answers per second, not by latency as Netflix's concurrency-limits gates it: a batching
server's latency rises with every request added long before it is busy. Several clients (shards) sharing
one server each back off on its refusals, which is how AIMD shares it.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

GAIN = 0.10  # a step up pays when the answers per second rose by this much (a shared machine's noise: ~5%)
CLIMB_KEEP = 0.05  # the climb's last doubling is kept unless the answers per second fell by more than this
DOWN_TOLERANCE = 0.05  # a step down is kept when the answers per second fell by no more than this
PROBE_EVERY = 8  # windows held between two probes
PROBE_SOON = 2  # ... after a refusal: the server may have room again soon
PROBE_STEP = 1.25  # a probe's limit, the held one times or divided by this (at least one more or one less)
REFUSAL_BACKOFF = 0.9  # a refusal is cheap and precise: step down a little (at least one less)
OVERLOAD_BACKOFF = 0.5  # a timeout or a 5xx costs a whole request's wait: halve
MAX_LATENCY_RATIO = 20.0  # a median latency this many times the fastest answer is over, whatever else it says
WINDOW_ANSWERS = 8  # answers a window measures at least: fewer are noise
WINDOW_ROUNDS = 2  # and at least this many rounds of the limit, after one round to settle
FILLED = 0.8  # a window counts when the run kept at least this share of the limit in flight, on average
ROOM_CHECK_S = 0.25  # how often an attempt waiting for room looks whether the run is stopping


@dataclass(frozen=True)
class Attempt:
    """One request sent: the limit's epoch when it went, and when."""

    epoch: int
    sent_at: float


class Observer:
    """What a predictor tells about each attempt; this one listens to nothing (imagery downloads, tests)."""

    def sending(self, stopping: threading.Event) -> Attempt | None:
        """Called before each attempt: waits, if need be, for room under the limit (None if `stopping` came first)."""
        return None

    def answered(self, attempt: Attempt | None) -> None:
        pass

    def ended(self, attempt: Attempt | None) -> None:
        """The attempt ended with an answer that measures nothing (an input refused in milliseconds, say)."""

    def refused(self, attempt: Attempt | None) -> None:
        pass

    def overloaded(self, attempt: Attempt | None) -> None:
        pass


UNOBSERVED = Observer()


class Concurrency(Observer):
    """The limit on requests in flight, between `minimum` and `maximum` (equal: fixed, as --concurrency sets it)."""

    def __init__(self, minimum: int, maximum: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"concurrency bounds must be 1 <= minimum <= maximum, not {minimum} and {maximum}")
        self.minimum, self.maximum, self.clock = minimum, maximum, clock
        self.refusals = 0  # refused attempts, all sent again
        self._limit = minimum
        self._in_flight = 0  # attempts sent and not yet answered
        self._counted_at, self._in_flight_seconds = clock(), 0.0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # an attempt waits here while the limit is full
        self._epoch = 0
        self._phase = "climb"  # climb, hold, probe (a window at the probe's limit), return (one back at the held)
        self._below: tuple[int, float] | None = None  # climbing: the limit a step down, and its answers per second
        self._held: float | None = None  # holding: the last window's answers per second at the held limit
        self._probe: tuple[int, int, float] | None = None  # (held limit, probe limit, the probe's answers per second)
        self._probe_up = False  # the last probe's way: they alternate
        self._until_probe = PROBE_EVERY
        self._floor_s = math.inf
        self._time_at: dict[int, float] = {}
        self._since = clock()
        self._window_start(settle=False)

    @property
    def fixed(self) -> bool:
        return self.minimum == self.maximum

    @property
    def limit(self) -> int:
        return self._limit

    def describe(self) -> str:
        return f"{self.minimum}" if self.fixed else f"adaptive, {self.minimum}-{self.maximum}"

    @property
    def settled(self) -> int:
        """The limit this run settled on: the median of the limit over the run's time (the climb is short)."""
        with self._lock:
            times = dict(self._time_at)
            times[self._limit] = times.get(self._limit, 0.0) + self.clock() - self._since
        half, held = sum(times.values()) / 2, 0.0
        for limit in sorted(times):
            held += times[limit]
            if held >= half:
                return limit
        return self._limit

    # --- what the predictors report, attempt by attempt (from the sending threads) ---

    def has_room(self) -> bool:
        """Whether one more attempt fits under the limit now."""
        return self._in_flight < self._limit

    def sending(self, stopping: threading.Event | None = None) -> Attempt | None:
        # A request refused earlier and sent again after its hint may find the limit lowered meanwhile: it waits
        # for an answer to make room, as a new request would, rather than be refused again at once.
        with self._room:
            while not self.has_room():
                if stopping is not None and stopping.is_set():
                    return None
                self._room.wait(timeout=ROOM_CHECK_S)
            now = self.clock()
            self._count_in_flight(now, +1)
            return Attempt(self._epoch, now)

    def _count_in_flight(self, now: float, change: int) -> None:
        """Attempts in flight, and their sum over time since the window began (Little's law's L, below)."""
        self._in_flight_seconds += self._in_flight * (now - self._counted_at)
        self._counted_at, self._in_flight = now, self._in_flight + change

    def _done(self, now: float) -> None:
        self._count_in_flight(now, -1)
        self._room.notify()

    def answered(self, attempt: Attempt | None) -> None:
        with self._lock:
            if attempt is None:
                return
            now = self.clock()
            self._done(now)
            latency_s = now - attempt.sent_at
            self._floor_s = min(self._floor_s, latency_s)
            if self.fixed or attempt.epoch != self._epoch:
                return  # sent at another limit: not this window's measure
            if self._settling > 0:
                self._settling -= 1  # the first round at a new limit: the server's queue still changing
                if self._settling == 0:
                    self._measure_from(now)
                return
            self._latencies.append(latency_s)
            if len(self._latencies) >= max(WINDOW_ANSWERS, WINDOW_ROUNDS * self._limit):
                # Little's law: answers per second = requests in flight ÷ latency, both over the window. Counting
                # answers over time instead misreads a batching server, which answers a whole batch at once.
                in_flight = self._in_flight_seconds / max(now - self._window_at, 1e-9)
                if in_flight < FILLED * self._limit:
                    self._window_start(settle=False)  # the run kept fewer in flight (short of images): no measure
                    return
                per_s = in_flight / max(statistics.fmean(self._latencies), 1e-9)
                self._decide(per_s, statistics.median(self._latencies))

    def ended(self, attempt: Attempt | None) -> None:
        with self._lock:
            if attempt is not None:
                self._done(self.clock())

    def refused(self, attempt: Attempt | None) -> None:
        with self._lock:
            self.refusals += 1
            if attempt is None:
                return
            self._done(self.clock())
            if attempt.epoch == self._epoch and not self.fixed:
                self._back_off(REFUSAL_BACKOFF, probe_in=PROBE_SOON)

    def overloaded(self, attempt: Attempt | None) -> None:
        with self._lock:
            if attempt is None:
                return
            self._done(self.clock())
            if attempt.epoch == self._epoch and not self.fixed:
                self._back_off(OVERLOAD_BACKOFF, probe_in=PROBE_EVERY)

    # --- the decisions (under the lock) ---

    def _decide(self, per_s: float, latency_s: float) -> None:
        """A window is measured: `per_s` answers per second at this limit, `latency_s` their median latency."""
        over = latency_s > MAX_LATENCY_RATIO * self._floor_s
        if self._phase == "climb":
            self._climb(per_s, over)
        elif self._phase == "probe":
            held, to, _ = self._probe
            self._probe, self._phase = (held, to, per_s), "return"
            self._set(held)  # back, for the window after it: the probe is judged between the two
        elif self._phase == "return":
            self._judge_probe(per_s, over)
        elif over:
            self._back_off(REFUSAL_BACKOFF, probe_in=PROBE_EVERY)
        else:
            self._held = per_s
            self._until_probe -= 1
            if self._until_probe <= 0:
                self._start_probe()
            else:
                self._window_start(settle=False)

    def _climb(self, per_s: float, over: bool) -> None:
        below = self._below
        if (below is None or per_s >= below[1] * (1 + GAIN)) and not over and self._limit < self.maximum:
            self._below = (self._limit, per_s)
            self._set(min(self.maximum, 2 * self._limit))
            return
        self._phase, self._until_probe, self._held = "hold", PROBE_EVERY, per_s
        if below is not None and (per_s < below[1] * (1 - CLIMB_KEEP) or over):
            self._held = below[1]  # the last doubling lost answers: back to the level below it
            self._set(below[0])
        else:
            self._window_start(settle=False)

    def _start_probe(self) -> None:
        """A step up or down, in turn (one more or one less at least), unless a bound is in the way of both."""
        up = min(self.maximum, max(self._limit + 1, math.ceil(self._limit * PROBE_STEP)))
        down = max(self.minimum, min(self._limit - 1, math.floor(self._limit / PROBE_STEP)))
        self._probe_up = not self._probe_up
        to = up if (self._probe_up and up != self._limit) or down == self._limit else down
        self._until_probe = PROBE_EVERY
        if to == self._limit:
            self._window_start(settle=False)
            return
        self._probe, self._phase = (self._limit, to, 0.0), "probe"
        self._set(to)

    def _judge_probe(self, per_s: float, over: bool) -> None:
        """The window back at the held limit is in: the probe against the mean of the windows around it."""
        held, to, probed = self._probe
        baseline = (self._held + per_s) / 2 if self._held is not None else per_s
        self._probe, self._phase, self._held = None, "hold", per_s
        if to > held and probed >= baseline * (1 + GAIN) and not over:
            # More in flight paid: the server has room again (or grew): climb from the probe's limit.
            self._phase, self._below = "climb", (held, baseline)
            self._set(to)
        elif to < held and (probed >= baseline * (1 - DOWN_TOLERANCE) or over):
            self._set(to)  # as many answers with fewer in flight: hold there, the server's queue shorter
        elif over:
            self._back_off(REFUSAL_BACKOFF, probe_in=PROBE_EVERY)
        else:
            self._window_start(settle=False)

    def _back_off(self, factor: float, probe_in: int) -> None:
        self._phase, self._probe, self._held, self._until_probe = "hold", None, None, probe_in
        self._set(max(self.minimum, min(self._limit - 1, math.floor(self._limit * factor))))

    def _set(self, limit: int) -> None:
        if limit > self._limit:
            self._room.notify(limit - self._limit)
        now = self.clock()
        self._time_at[self._limit] = self._time_at.get(self._limit, 0.0) + now - self._since
        self._since, self._limit = now, limit
        self._epoch += 1  # what was sent before this answers for the old limit
        self._window_start(settle=True)

    def _window_start(self, settle: bool) -> None:
        self._settling = self._limit if settle else 0
        self._measure_from(self.clock())

    def _measure_from(self, now: float) -> None:
        self._window_at, self._counted_at, self._in_flight_seconds = now, now, 0.0
        self._latencies: list[float] = []
