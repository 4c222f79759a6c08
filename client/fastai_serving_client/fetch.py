"""Reading one key's image bytes: from disk, or from an imagery server with retries."""

from __future__ import annotations

import threading

import requests

from . import defaults
from .retry import DEFAULT_BACKOFF, Backoff, GaveUp, Retryable, retry_after_s, with_retries
from .sources import is_url

# Imagery answers worth another try: throttled, or the server (or a proxy before it) failing for now.
TRANSIENT_STATUSES = (408, 425, 429, 500, 502, 503, 504)


class InputFailed(Exception):
    """This key failed for good (a 404 tile, an unreadable file, bytes the server refuses): recorded, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InputSkipped(Exception):
    """This key has nothing to predict (a scene window all of nodata): counted, never sent, not recorded."""


class Fetcher:
    """Reads image bytes for many threads at once: one HTTP session (a kept-alive connection) per thread."""

    def __init__(
        self,
        stopping: threading.Event,
        backoff: Backoff = DEFAULT_BACKOFF,
        timeout_s: float = defaults.FETCH_TIMEOUT_S,
    ) -> None:
        self.stopping, self.backoff, self.timeout_s = stopping, backoff, timeout_s
        self._local = threading.local()

    def fetch(self, locator: str) -> bytes:
        """The bytes at a path or URL; InputFailed says why not (Stopped when the run stops first)."""
        if not is_url(locator):
            try:
                with open(locator, "rb") as image:
                    return image.read()
            except OSError as error:
                raise InputFailed(f"cannot read {locator}: {error.strerror or error}") from error
        try:
            return with_retries(lambda: self._download(locator), self.backoff, self.stopping)
        except GaveUp as failure:
            raise InputFailed(f"imagery: {failure}") from failure

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _download(self, url: str) -> bytes:
        try:
            response = self._session().get(url, timeout=self.timeout_s)
        except requests.RequestException as error:
            raise Retryable(f"{type(error).__name__} from {url}") from error
        if response.status_code == 200:
            return response.content
        reason = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + f" from {url}"
        if response.status_code in TRANSIENT_STATUSES:
            raise Retryable(reason, retry_after_s(response.headers.get("Retry-After")))
        raise InputFailed(f"imagery: {reason}")
