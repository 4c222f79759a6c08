"""Who may call the fronts: API keys from a file, and which routes need one (docs/security.md).

Both fronts ask `Access.check` before they parse a body or call the service: the REST front in a
before_request hook (rest/access.py), the gRPC front in an interceptor (grpc/access.py). Keys are
held only as SHA-256 digests and a presented key is compared, in constant time, with every key held
(no early exit), so neither its content nor which key it matched shows in the time taken. Each key
has a name: what logs and metrics show (`fastai_serving_calls_by_key`), never the key. The file is
read again when it changes (looked at at most once a second) or on SIGHUP; a file that cannot be
read keeps the keys read before, so an edit half-written never locks every client out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from fastai_serving import defaults
from fastai_serving.contract.errors import Failure, ServingError
from fastai_serving_shim import metrics
from fastai_serving_shim.settings import Settings, env_name
from fastai_serving_shim.watched import Watched

logger = logging.getLogger("fastai_serving.access")

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BEARER = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)
SIGHUP, CHANGED_ON_DISK = "SIGHUP", "the file changed"  # why a front read its key file again (its log says)


class Route(Enum):
    MODEL = "model"  # every model route, and anything not named below: a key, when keys are on
    HEALTH = "health"  # liveness and readiness, REST and gRPC: open unless keyed_health
    METRICS = "metrics"  # GET /metrics: metrics_access says
    PUBLIC = "public"  # the API's own description (/openapi.yaml, gRPC reflection): the same on every server


class Refusal(Enum):
    """Why a call was refused: the metrics' reason label (a fixed set, never a client's words)."""

    MISSING_KEY = "missing_key"
    WRONG_KEY = "wrong_key"  # not a key the file holds: mistyped, or revoked
    NOT_LOOPBACK = "not_loopback"  # /metrics from another machine, with metrics_access=loopback


class KeyFileError(ValueError):
    """A key file that cannot be used: the message names the line, never a key."""


def parse_keys(text: str) -> dict[bytes, str]:
    """`name: key` lines (blank lines and # comments skipped) -> {the key's SHA-256 digest: its name}."""
    keys: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = (part.strip() for part in line.partition(":"))
        if not colon or not KEY_NAME.fullmatch(name):
            raise KeyFileError(f"line {number} is not `name: key` (a name of letters, digits, _ . -)")
        if len(key) < defaults.MIN_API_KEY_CHARS or any(character.isspace() for character in key):
            raise KeyFileError(
                f"line {number} ({name}): a key is at least {defaults.MIN_API_KEY_CHARS} characters with no space "
                "(make one with: openssl rand -hex 32)"
            )
        digest = hashlib.sha256(key.encode()).digest()
        if name in keys.values() or digest in keys:
            raise KeyFileError(f"line {number} ({name}): a name or key given twice")
        keys[digest] = name
    if not keys:
        raise KeyFileError("it holds no key (to ask for no key, unset the setting instead)")
    return keys


class ApiKeys:
    """The keys of one file, read again when it changes; `name_of(key)`: the key's name, or None."""

    def __init__(self, path: str, watched: Watched | None = None) -> None:
        self.path = path
        self.watched = watched or Watched([path])
        self._lock = threading.Lock()
        try:
            self._keys = self._read()
        except KeyFileError as error:  # a file that cannot be used fails the start
            raise KeyFileError(f"the API key file ({env_name('api_keys_file')}): {error}") from None
        logger.info("API keys: %d keys (%s)", len(self._keys), ", ".join(self.names()))

    def names(self) -> list[str]:
        return sorted(self._keys.values())

    def name_of(self, presented: str) -> str | None:
        if self.watched.changed():
            self.reload(CHANGED_ON_DISK)
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, name in self._keys.items():  # every key compared: the time says nothing of which matched
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def reload(self, why: str = SIGHUP) -> bool:
        """Read the file again now; on failure keep the keys read before (said in the log, without the path).
        The log says why and in which process (each front process reads the file for itself)."""
        with self._lock:
            self.watched.seen_now()
            try:
                keys = self._read()
            except KeyFileError as error:
                logger.error("API keys: the key file cannot be used (%s): still using the %d keys read before",
                             error, len(self._keys))  # fmt: skip
                return False
            before, self._keys = set(self._keys.values()), keys
        after = set(keys.values())
        logger.warning("API keys: read again (%s, process %d): %d keys (%s)%s%s", why, os.getpid(), len(after),
                       ", ".join(sorted(after)),
                       f"; added {', '.join(sorted(after - before))}" if after - before else "",
                       f"; revoked {', '.join(sorted(before - after))}" if before - after else "")  # fmt: skip
        return True

    def _read(self) -> dict[bytes, str]:
        try:
            text = Path(self.path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise KeyFileError(f"it cannot be read: {type(error).__name__}") from None
        return parse_keys(text)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (REST) or `authorization` metadata (gRPC)."""
    match = BEARER.fullmatch(authorization or "")
    return match[1] if match else None


class Access:
    """What each kind of route needs, from the settings; `check` answers the caller's key name or refuses."""

    def __init__(self, settings: Settings, keys: ApiKeys | None = None) -> None:
        self.keys = keys or (ApiKeys(settings.api_keys_file) if settings.keyed else None)
        self.needs_key = {Route.MODEL}
        if settings.keyed_health:
            self.needs_key.add(Route.HEALTH)
        if settings.metrics_access == "keyed":
            self.needs_key.add(Route.METRICS)
        self.loopback_metrics = settings.metrics_access == "loopback"

    def check(self, front: str, route: Route, presented: str | None, how: str,
              from_loopback: Callable[[], bool]) -> str:  # fmt: skip
        """The name of the caller's key ("" where none is needed); else a `ServingError` (UNAUTHENTICATED, or
        FORBIDDEN), counted under its reason. `how`: how this front's clients send a key, for the message."""
        if route is Route.METRICS and self.loopback_metrics and not from_loopback():
            raise self._refused(front, Refusal.NOT_LOOPBACK, Failure.FORBIDDEN,
                                f"/metrics answers only on this machine ({env_name('metrics_access')}=loopback)")  # fmt: skip
        if self.keys is None or route not in self.needs_key:
            return ""
        if not presented:
            raise self._refused(front, Refusal.MISSING_KEY, Failure.UNAUTHENTICATED,
                                f"this server needs an API key: {how}")  # fmt: skip
        name = self.keys.name_of(presented)
        if name is None:
            raise self._refused(front, Refusal.WRONG_KEY, Failure.UNAUTHENTICATED,
                                "the API key is not one this server accepts (mistyped, or revoked)")  # fmt: skip
        metrics.CALLS_BY_KEY.labels(front=front, key=name).inc()
        return name

    @staticmethod
    def _refused(front: str, reason: Refusal, failure: Failure, message: str) -> ServingError:
        metrics.REFUSED_CALLS.labels(front=front, reason=reason.value).inc()
        return ServingError(message, failure)
