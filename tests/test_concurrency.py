"""predict-batch's adaptive concurrency (client/fastai_serving_client/concurrency.py), in-process, on a fake clock.

A closed loop of simulated requests: the controller's limit says how many are in flight; each request is
answered after the latency a synthetic server gives it for the load it found, or refused at once with a
hint, and sent again after it when there is room under the limit, as the runner's sending threads do.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fastai_serving_client.concurrency import Concurrency
from harness.waiting import wait_for


@dataclass
class Server:
    """A synthetic server: `latency_s(n)` for a request that finds n in flight (itself included); refused above
    `admits` in flight, with a hint of `hint_s`. Its fields may change while a loop runs."""

    latency_s: Callable[[int], float]
    admits: int | None = None
    hint_s: float = 0.05


def busy_at(slots: int, service_s: float) -> Callable[[int], float]:
    """`slots` requests served at once, each in `service_s`; more wait their turn: answers per second = slots / service_s."""
    return lambda n: service_s * max(1.0, n / slots)


def batching(fixed_s: float, per_request_s: float, most_per_s: float) -> Callable[[int], float]:
    """A batching server: a batch of n costs fixed_s + n × per_request_s, and it answers at most `most_per_s` a second."""
    return lambda n: max(fixed_s + n * per_request_s, n / most_per_s)


@dataclass
class Loop:
    """Requests kept at the controller's limit against a server, on a fake clock; what happened, over time."""

    server: Server
    bounds: tuple[int, int] = (1, 128)  # the controller's minimum and maximum
    now: float = 0.0
    answered_at: list[float] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) at each event
    refusals: int = 0

    def __post_init__(self) -> None:
        self.concurrency = Concurrency(*self.bounds, clock=lambda: self.now)
        self._events: list = []
        self._order = itertools.count()
        self._at_server = 0
        self._slots = 0  # requests of the run in flight: at the server, or waiting out a refusal's hint
        self._again = 0  # refused requests whose hint has passed, waiting for room under the limit

    def _send(self) -> None:
        attempt = self.concurrency.sending()
        if self.server.admits is not None and self._at_server >= self.server.admits:
            heapq.heappush(self._events, (self.now + 0.001, next(self._order), "refused", attempt))
            return
        self._at_server += 1
        answer_at = self.now + self.server.latency_s(self._at_server)
        heapq.heappush(self._events, (answer_at, next(self._order), "answered", attempt))

    def run_for(self, seconds: float, sending: bool = True) -> Loop:
        """Keep the limit's requests in flight for `seconds` (`sending=False`: only let those in flight finish)."""
        until = self.now + seconds
        while True:
            while self._again and self.concurrency.has_room():
                self._again -= 1
                self._send()
            while sending and self._slots < self.concurrency.limit and self.concurrency.has_room():
                self._slots += 1
                self._send()
            if not self._events:
                return self
            when, _, what, attempt = heapq.heappop(self._events)
            if when > until:
                heapq.heappush(self._events, (when, next(self._order), what, attempt))
                self.now = until
                return self
            self.now = when
            if what == "answered":
                self._at_server -= 1
                self._slots -= 1
                self.answered_at.append(when)
                self.concurrency.answered(attempt)
            elif what == "refused":
                self.refusals += 1
                self.concurrency.refused(attempt)
                heapq.heappush(self._events, (when + self.server.hint_s, next(self._order), "again", None))
            else:
                self._again += 1  # the refused request, sent again after the hint once there is room
            self.limits.append((self.now, self.concurrency.limit))

    def answers_per_s(self, since: float, until: float | None = None) -> float:
        until = self.now if until is None else until
        return sum(since <= at < until for at in self.answered_at) / (until - since)

    def limits_between(self, since: float, until: float | None = None) -> set[int]:
        until = self.now if until is None else until
        return {limit for at, limit in self.limits if since <= at < until}


def test_it_climbs_to_a_busy_servers_capacity_within_a_doubling_and_answers_as_fast_as_the_server_can():
    loop = Loop(Server(busy_at(slots=12, service_s=1.0))).run_for(300)
    assert 12 <= loop.concurrency.settled <= 2 * 16  # the doubling past 16 gained nothing, and cost nothing either
    assert loop.answers_per_s(since=100) >= 0.95 * 12


def test_on_a_batching_server_it_climbs_past_where_latency_starts_rising_until_the_answers_stop_rising():
    # Latency rises from the first request on (bigger batches), and so do the answers per second, up to 20 in flight.
    server = Server(batching(fixed_s=1.0, per_request_s=0.05, most_per_s=10))
    loop = Loop(server).run_for(600)
    assert loop.answers_per_s(since=300) >= 0.95 * 10
    assert 16 <= loop.concurrency.settled <= 64


def test_it_starts_at_the_lower_bound_and_never_leaves_the_bounds():
    loop = Loop(Server(busy_at(slots=100, service_s=1.0)), bounds=(3, 20)).run_for(60)
    assert loop.limits[0][1] == 3
    assert {limit for _, limit in loop.limits} <= set(range(3, 21))
    assert loop.concurrency.settled == 20  # the server could take more: it stays at the upper bound


def test_it_backs_off_on_refusals_and_keeps_the_server_full_just_below_where_it_refuses():
    loop = Loop(Server(busy_at(slots=8, service_s=1.0), admits=10)).run_for(600)
    assert loop.refusals > 0
    assert loop.limits_between(300) <= set(range(6, 14))
    assert loop.answers_per_s(since=300) >= 0.95 * 8
    assert loop.refusals < 0.1 * len(loop.answered_at)  # refusals are its probes, not its traffic


def test_it_backs_off_when_the_servers_latency_rises_far_above_its_floor():
    server = Server(busy_at(slots=16, service_s=1.0))
    loop = Loop(server).run_for(300)
    before = loop.concurrency.limit
    server.latency_s = busy_at(slots=16, service_s=40.0)  # something else took the server: every answer 40 times slower
    loop.run_for(6000)
    assert max(loop.limits_between(3000)) < before


def climbed(server: Server, seconds: float = 60) -> Concurrency:
    """A controller that ran against `server` for a while, its requests since all answered."""
    return Loop(server).run_for(seconds).run_for(seconds, sending=False).concurrency


def test_it_halves_on_a_timeout_or_an_unavailable_server():
    concurrency = climbed(Server(busy_at(slots=64, service_s=1.0)))
    before = concurrency.limit
    concurrency.overloaded(concurrency.sending())
    assert before >= 64 and concurrency.limit == before // 2


def test_one_back_off_per_round_trip_refusals_of_requests_sent_before_the_last_change_are_not_counted_again():
    concurrency = climbed(Server(busy_at(slots=64, service_s=1.0)))
    sent_together = [concurrency.sending() for _ in range(5)]
    before = concurrency.limit
    for attempt in sent_together:
        concurrency.refused(attempt)
    assert before >= 64 and concurrency.limit == int(before * 0.9)
    assert concurrency.refusals == 5


def test_an_attempt_waits_for_room_under_the_limit_and_goes_when_an_answer_makes_it():
    concurrency = climbed(Server(busy_at(slots=8, service_s=1.0)))
    in_flight = [concurrency.sending() for _ in range(concurrency.limit)]
    went = []
    waiting = threading.Thread(target=lambda: went.append(concurrency.sending(threading.Event())))
    waiting.start()
    waiting.join(timeout=0.05)
    assert waiting.is_alive() and not went  # the limit is full: a refused request sent again waits its turn
    concurrency.answered(in_flight.pop())
    wait_for(lambda: went, "the waiting attempt to go")
    assert went[0] is not None


def test_an_attempt_waiting_for_room_gives_up_when_the_run_stops():
    concurrency = climbed(Server(busy_at(slots=8, service_s=1.0)))
    for _ in range(concurrency.limit):
        concurrency.sending()
    stopping = threading.Event()
    stopping.set()
    assert concurrency.sending(stopping) is None


def test_it_recovers_when_the_server_stops_refusing():
    server = Server(busy_at(slots=32, service_s=1.0), admits=2)
    loop = Loop(server).run_for(300)
    assert loop.limits_between(100) <= {1, 2, 3}
    server.admits = None  # the server has room again (it scaled, or its other clients left)
    loop.run_for(300)
    assert loop.concurrency.limit >= 32
    assert loop.answers_per_s(since=loop.now - 100) >= 0.95 * 32


def test_a_fixed_concurrency_never_moves():
    loop = Loop(Server(busy_at(slots=2, service_s=1.0), admits=4), bounds=(8, 8)).run_for(60)
    concurrency = loop.concurrency
    concurrency.overloaded(concurrency.sending())
    assert {limit for _, limit in loop.limits} == {8} and concurrency.limit == 8
    assert concurrency.fixed and concurrency.describe() == "8"


def test_the_limit_it_settled_on_is_the_median_of_its_limit_over_the_runs_time():
    loop = Loop(Server(busy_at(slots=8, service_s=1.0), admits=10)).run_for(300)
    held: dict[int, float] = {}
    for (at, limit), (then, _) in zip(loop.limits, loop.limits[1:] + [(loop.now, 0)], strict=True):
        held[limit] = held.get(limit, 0.0) + then - at
    below = [sum(time for limit, time in held.items() if limit < level) for level in sorted(held)]
    median = max(level for level, time in zip(sorted(held), below, strict=True) if time < loop.now / 2)
    assert len(held) > 1 and loop.concurrency.settled == median


@pytest.mark.parametrize("minimum, maximum", [(0, 4), (5, 4)])
def test_bounds_out_of_order_are_refused(minimum, maximum):
    with pytest.raises(ValueError, match="1 <= minimum <= maximum"):
        Concurrency(minimum, maximum)


def test_an_attempt_that_ends_without_a_measure_frees_its_place_and_moves_nothing():
    concurrency = climbed(Server(busy_at(slots=8, service_s=1.0)))
    limit = concurrency.limit
    in_flight = [concurrency.sending() for _ in range(limit)]
    assert not concurrency.has_room()
    concurrency.ended(in_flight.pop())  # the server refused the input at once: no latency to learn from
    assert concurrency.has_room() and concurrency.limit == limit
