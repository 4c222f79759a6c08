"""A checked load: concurrent requests of mixed sizes whose every answer is compared with its own expectation.

Used by the short load tests in the suite and by `make soak`. Each image's expected
probabilities are computed in-process from the same Learner; a response must carry, in
order, exactly its own request's predictions: none swapped, dropped or duplicated.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

REFUSED = 429
RETRY_AFTER_MAX_S = 1.0  # a refused client of the load waits at most this long before its next request


@dataclass
class LoadResult:
    requests: int = 0
    images: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # HTTP status (0: no answer) -> count
    refused: int = 0  # 429s: refused before the queue, waited out as Retry-After says (a client's part, not an error)
    mismatches: list[str] = field(default_factory=list)
    answered_by: list[str] = field(default_factory=list)  # per 200 answer, in order: "expected" or "also_expected"
    failures: list[str] = field(default_factory=list)  # what went wrong where no answer came
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {self.images} images in {self.seconds:.1f} s; "
            f"errors {self.errors or 0}; refused and retried later {self.refused}; mismatched predictions {len(self.mismatches)}; p99 {self.p99_ms():.0f} ms"
        )


def rounds(duration_s: float, longest_s: float = 60.0) -> list[float]:
    """`duration_s` cut into rounds of at most `longest_s` (a soak samples memory between rounds): at least one."""
    if duration_s <= 0:
        raise ValueError(f"a load of {duration_s} s: give a positive duration")
    whole, rest = divmod(duration_s, longest_s)
    return [longest_s] * int(whole) + ([rest] if rest > 0 else [])


def merge(total: LoadResult, more: LoadResult) -> LoadResult:
    """Two runs' results as one."""
    total.requests += more.requests
    total.refused += more.refused
    total.images += more.images
    for status, count in more.errors.items():
        total.errors[status] = total.errors.get(status, 0) + count
    total.mismatches += more.mismatches
    total.failures += more.failures
    total.latencies_ms += more.latencies_ms
    total.answered_by += more.answered_by
    total.seconds += more.seconds
    return total


def expected_probabilities(served, images: list[bytes]) -> list[list[float]]:
    """What the Learner answers in-process for each image."""
    from fastai_serving.engine.predict import decode_images, predict_images

    decoded = decode_images(images, [f"image {i}" for i in range(len(images))])
    return [p.output.tolist() for p in predict_images(served, decoded)]


def run_checked_load(
    url: str,
    images: list[bytes],
    expected: list[list[float]],
    clients: int = 8,
    max_instances: int = 32,
    duration_s: float | None = None,
    requests_per_client: int = 10,
    seed: int = 0,
    tolerance: float = 1e-4,
    timeout_s: float = 120,
    also_expected: list[list[float]] | None = None,
    until: threading.Event | None = None,
    saturating: threading.Event | None = None,
) -> LoadResult:
    """`clients` threads send requests of 1..max_instances random images until their count, the duration, or `until` is set.

    `saturating` is set once every client has had an answer: from then on each keeps a request in flight.

    With `also_expected` (another model version's predictions), an answer may match either
    set, as a whole; `answered_by` records which.
    """
    encoded = [base64.b64encode(image).decode() for image in images]
    result, lock = LoadResult(), threading.Lock()
    answered_clients: set[int] = set()
    deadline = time.monotonic() + duration_s if duration_s else None

    def going_on(sent: int) -> bool:
        if until is not None:
            return not until.is_set() and (deadline is None or time.monotonic() < deadline)
        return time.monotonic() < deadline if deadline is not None else sent < requests_per_client

    def client(index: int) -> None:
        rng, session, sent = random.Random(seed * 1000 + index), requests.Session(), 0
        while going_on(sent):
            chosen = [rng.randrange(len(images)) for _ in range(rng.randint(1, max_instances))]
            body = json.dumps({"instances": [{"image_bytes": {"b64": encoded[i]}} for i in chosen]})
            began = time.perf_counter()
            failure = ""
            try:
                response = session.post(url, data=body, timeout=timeout_s)
                status = response.status_code
            except requests.RequestException as error:
                status, failure = 0, f"client {index} request {sent}: {error!r}"
            elapsed = (time.perf_counter() - began) * 1000
            problems, source = [], ""
            if status == 200:
                body = response.json()
                problems, source = _compare(body, chosen, expected, tolerance), "expected"
                if problems and also_expected is not None and not _compare(body, chosen, also_expected, tolerance):
                    problems, source = [], "also_expected"
            if status == REFUSED:  # the server's queue was full: wait as it says, as a client should
                with lock:
                    result.refused += 1
                (until or threading.Event()).wait(min(float(response.headers.get("Retry-After", 1)), RETRY_AFTER_MAX_S))
                sent += 1
                continue
            with lock:
                result.requests += 1
                result.latencies_ms.append(elapsed)
                if status != 200:
                    result.errors[status] = result.errors.get(status, 0) + 1
                else:
                    result.images += len(chosen)
                    result.answered_by.append(source)
                result.mismatches += [f"client {index} request {sent}: {p}" for p in problems]
                result.failures += [failure] if failure else []
                answered_clients.add(index)
                if saturating is not None and len(answered_clients) == clients:
                    saturating.set()
            sent += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def _compare(body: dict, chosen: list[int], expected: list[list[float]], tolerance: float) -> list[str]:
    predictions = body.get("predictions", [])
    if len(predictions) != len(chosen):
        return [f"{len(predictions)} predictions for {len(chosen)} instances"]
    return [
        f"instance {position} (image {image}) answered {prediction[:3]}..., expected {expected[image][:3]}..."
        for position, (image, prediction) in enumerate(zip(chosen, predictions, strict=True))
        if len(prediction) != len(expected[image])
        or max(abs(a - b) for a, b in zip(prediction, expected[image], strict=True)) > tolerance
    ]


def concurrently(calls: list) -> list:
    """Run the calls at the same moment on threads; their results in order."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results
