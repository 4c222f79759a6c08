"""Files the fronts re-read when they change: API keys, TLS certificates (docs/security.md).

A change is seen by a stat of each file (following links, as Kubernetes' Secret volumes and
cert-manager swap them), at most once every `check_s` on the path that asks, so a request pays
for one stat a second at most and never reads a file that did not change.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from fastai_serving import defaults

Signature = tuple[tuple[int, int, int] | None, ...]


def signature_of(paths: Sequence[str]) -> Signature:
    """Each file's (inode, size, modification time in ns), or None where it cannot be seen."""
    seen = []
    for path in paths:
        try:
            status = os.stat(path)
            seen.append((status.st_ino, status.st_size, status.st_mtime_ns))
        except OSError:
            seen.append(None)
    return tuple(seen)


class Watched:
    """`changed()`: whether any of `paths` changed since it last said so (looked at at most every `check_s`)."""

    def __init__(
        self,
        paths: Sequence[str],
        check_s: float = defaults.ACCESS_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths, self.check_s, self.clock = list(paths), check_s, clock
        self._seen = signature_of(self.paths)
        self._looked = clock()
        self._lock = threading.Lock()

    def changed(self) -> bool:
        now = self.clock()
        if now - self._looked < self.check_s:
            return False
        with self._lock:
            self._looked = now
            current = signature_of(self.paths)
            if current == self._seen:
                return False
            self._seen = current
            return True

    def seen_now(self) -> None:
        """The files as they are now count as seen (they are being read whole, as on SIGHUP)."""
        with self._lock:
            self._seen, self._looked = signature_of(self.paths), self.clock()

    def forget(self) -> None:
        """The next look says changed, whatever the files (a SIGHUP: read them again now)."""
        with self._lock:
            self._seen, self._looked = (), self.clock() - self.check_s
