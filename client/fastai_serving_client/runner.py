"""The pipeline: fetch images (a thread pool), batch them, send batches (up to the concurrency's limit), commit answers.

One coordinating thread keeps the pools fed: fetching runs ahead of prediction within a bounded
window, so images are downloaded while earlier batches are predicted and memory stays bounded.
One writer thread owns the destination: it commits answers in the order they arrive (whatever
has queued up, in one write and one fsync or transaction), so sending the next requests never
waits on the disk or the database. What was answered but not yet committed when a run is killed
is simply done again by the next run; Ctrl-C and SIGTERM wait for the writer to commit it. The
requests in flight follow the concurrency's limit (concurrency.py), which moves as the server
answers, refuses or times out (the predictor tells it of every attempt).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from . import defaults
from .concurrency import Concurrency
from .fetch import Fetcher, InputFailed, InputSkipped
from .predictor import InputRejected, Predictor, ServerFailed
from .progress import Progress
from .retry import Stopped
from .sinks import Sink
from .sources import Source

Answers = tuple[list[tuple[str, Any]], list[tuple[str, str]]]  # (key, prediction) pairs, (key, reason) failures


@dataclass
class Outcome:
    total: int  # the keys of this shard
    skipped: int  # already done before this run
    done: int = 0  # done by this run
    nodata: int = 0  # scene windows of nothing but nodata: counted, never sent
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason, this run's
    elapsed_s: float = 0.0
    error: str = ""  # why the run stopped early, when a failure stopped it
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def finished(self) -> bool:
        return not self.error and not self.interrupted


def predict_items(predictor: Predictor, items: list[tuple[str, bytes]]) -> Answers:
    """(key, prediction) pairs and (key, reason) failures for a batch.

    A refused multi-image batch is sent again one image at a time, so one bad image fails alone.
    """
    try:
        predictions = predictor.predict([image for _, image in items])
        return [(key, prediction) for (key, _), prediction in zip(items, predictions, strict=True)], []
    except InputRejected as refused:
        if len(items) == 1:
            return [], [(items[0][0], refused.reason)]
    answered, failed = [], []
    for key, image in items:
        try:
            answered.append((key, predictor.predict([image])[0]))
        except InputRejected as refused:
            failed.append((key, refused.reason))
    return answered, failed


class Writer:
    """The one thread that writes to the destination, committing answers in arrival order."""

    def __init__(self, sink: Sink, outcome: Outcome, progress: Progress, stopping: threading.Event) -> None:
        self.sink, self.outcome, self.progress, self.stopping = sink, outcome, progress, stopping
        self.error: Exception | None = None
        self._queue: queue.SimpleQueue[Answers | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="commit", daemon=True)
        self._thread.start()

    def put(self, answers: Answers) -> None:
        self._queue.put(answers)

    def close(self) -> None:
        """Commit everything put so far, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            while not self._queue.empty():  # whatever else queued meanwhile goes in the same commit
                batch.append(self._queue.get())
            closing = batch[-1] is None
            answered = [pair for answers in batch if answers for pair in answers[0]]
            failed = [pair for answers in batch if answers for pair in answers[1]]
            if self.error is not None:
                continue  # the destination failed: drain and drop, the run is stopping
            try:
                self.sink.commit(answered)
                self.sink.record_failures(failed)
            except Exception as error:  # disk full, database gone: stop the run, keep what was committed
                self.error = error
                self.stopping.set()
                continue
            self.outcome.done += len(answered)
            self.outcome.failed.update(failed)
            self.progress.add(done=len(answered), failed=len(failed))


class BatchRun:
    def __init__(
        self,
        source: Source,
        sink: Sink,
        predictor: Predictor,
        fetcher: Fetcher,
        *,
        batch: int,
        concurrency: Concurrency,
        fetchers: int,
        stopping: threading.Event,
        abort: threading.Event,
    ) -> None:
        self.source, self.sink, self.predictor, self.fetcher = source, sink, predictor, fetcher
        self.batch, self.concurrency, self.fetchers = batch, concurrency, fetchers
        self.stopping, self.abort = stopping, abort
        self.error = ""

    def _fetch(self, key: str) -> bytes:
        try:
            locator = self.source.locate(key)
        except ValueError as error:
            raise InputFailed(str(error)) from error
        return self.fetcher.fetch(locator)

    def _stop_for(self, error: str) -> None:
        if not self.error:
            self.error = error
        self.stopping.set()

    def run(self, todo: Iterable[str], outcome: Outcome, progress: Progress) -> Outcome:
        keys = iter(todo)
        exhausted = False
        ready: deque[tuple[str, bytes]] = deque()
        fetching: dict[Future, str] = {}
        sending: dict[Future, list[str]] = {}
        fetch_pool = ThreadPoolExecutor(self.fetchers, thread_name_prefix="fetch")
        send_pool = ThreadPoolExecutor(self.concurrency.maximum, thread_name_prefix="send")  # threads made as needed
        writer = Writer(self.sink, outcome, progress, self.stopping)

        def top_up() -> None:
            """Keep a window of images fetching or fetched, and the concurrency's limit of requests in flight."""
            nonlocal exhausted
            if self.stopping.is_set():
                return
            limit = self.concurrency.limit
            window = max(self.fetchers, 2 * self.batch * limit)  # images fetched ahead of prediction
            while not exhausted and len(fetching) + len(ready) < window:
                key = next(keys, None)
                if key is None:
                    exhausted = True
                else:
                    fetching[fetch_pool.submit(self._fetch, key)] = key
            while len(sending) < limit and (len(ready) >= self.batch or (ready and exhausted and not fetching)):
                items = [ready.popleft() for _ in range(min(self.batch, len(ready)))]
                sending[send_pool.submit(predict_items, self.predictor, items)] = [key for key, _ in items]

        try:
            while not self.abort.is_set():
                top_up()
                if not sending and (self.stopping.is_set() or (exhausted and not fetching and not ready)):
                    break
                finished, _ = wait([*fetching, *sending], timeout=defaults.STOP_CHECK_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future in fetching:
                        key = fetching.pop(future)
                        try:
                            ready.append((key, future.result()))
                        except InputFailed as failure:
                            writer.put(([], [(key, failure.reason)]))
                        except InputSkipped:
                            outcome.nodata += 1  # only this thread counts them
                            progress.add(done=1)
                        except Stopped:
                            pass  # abandoned as the run stops: not done, so the next run fetches it
                    else:
                        sending.pop(future)
                        try:
                            writer.put(future.result())
                        except ServerFailed as failure:
                            self._stop_for(str(failure))
                        except Stopped:
                            pass
                progress.draw()
        finally:
            fetch_pool.shutdown(wait=False, cancel_futures=True)
            send_pool.shutdown(wait=False, cancel_futures=True)
            writer.close()  # every answer in hand is committed before the summary
            progress.close()
            outcome.elapsed_s = progress.elapsed_s
        if writer.error is not None:
            self._stop_for(f"could not write the results: {type(writer.error).__name__}: {writer.error}")
        outcome.error = self.error
        outcome.interrupted = not self.error and (self.stopping.is_set() or self.abort.is_set())
        return outcome
