"""What a person watching sees: a progress bar on a terminal, plain periodic lines elsewhere (logs, CI, kubectl logs)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from . import defaults

if TYPE_CHECKING:
    from .concurrency import Concurrency


def duration(seconds: float) -> str:
    """1:02:03, 2:03, or 0:07: hours only when there are any."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Counts what this run has done of `total` keys; draws itself at most every `redraw_s` (a bar) or `every_s` (lines)."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        tty: bool | None = None,
        every_s: float = defaults.PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        concurrency: Concurrency | None = None,
    ) -> None:
        self.total, self.stream, self.every_s, self.clock = total, stream, every_s, clock
        self.concurrency = concurrency  # its limit is shown: what the adaptive one settled on
        self.tty = stream.isatty() if tty is None else tty
        self.done = self.failed = 0
        self.started = clock()
        self._drawn_at: float | None = None
        self._lock = threading.Lock()  # the writer thread counts, the coordinating thread redraws
        self._bar = "█" if (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8" else "#"

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        """Images handled per second, this run (done and failed alike: both took their turn)."""
        elapsed = self.elapsed_s
        return (self.done + self.failed) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        left = self.total - self.done - self.failed
        if left <= 0:
            return duration(0)
        return duration(left / self.rate) if self.rate > 0 else "?"

    def add(self, done: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
        self.draw()

    def draw(self, force: bool = False) -> None:
        with self._lock:
            self._draw(force)

    def _draw(self, force: bool) -> None:
        if self.total == 0:
            return  # nothing to do this run: the summary says so
        now = self.clock()
        wait = 0.1 if self.tty else self.every_s
        if not force and self._drawn_at is not None and now - self._drawn_at < wait:
            return
        if not force and self._drawn_at is None and not self.tty and now - self.started < self.every_s:
            return  # lines: the first one after every_s, not at once
        self._drawn_at = now
        if self.tty:
            self.stream.write("\r" + self.bar_line(shutil.get_terminal_size().columns) + "\x1b[K")
        else:
            self.stream.write(self.plain_line() + "\n")
        self.stream.flush()

    def bar_line(self, columns: int) -> str:
        handled = self.done + self.failed
        share = handled / self.total if self.total else 1.0
        counts = f"{handled}/{self.total} {share:4.0%}"
        tail = f" {self.rate:5.1f} img/s{self._in_flight('  concurrency {}')}  ETA {self.eta()}  failed {self.failed}"
        width = max(10, min(40, columns - len(counts) - len(tail) - 4))
        filled = int(width * share)
        return f"{counts} |{self._bar * filled}{' ' * (width - filled)}|{tail}"

    def plain_line(self) -> str:
        handled = self.done + self.failed
        share = handled / self.total if self.total else 1.0
        return (
            f"predict-batch: {handled}/{self.total} ({share:.0%}), {self.rate:.1f} images/s"
            f"{self._in_flight(', concurrency {}')}, ETA {self.eta()}, {self.failed} failed"
        )

    def _in_flight(self, form: str) -> str:
        """The concurrency's limit in `form`, and the refusals the server made so far, if any; "" without one."""
        if self.concurrency is None:
            return ""
        refused = self.concurrency.refusals
        return form.format(self.concurrency.limit) + (f" ({refused} refused, sent again)" if refused else "")

    def close(self) -> None:
        """The last state, and the terminal's line left for what follows."""
        if self.tty and self.total:
            with self._lock:
                self._draw(force=True)
                self.stream.write("\n")
                self.stream.flush()
