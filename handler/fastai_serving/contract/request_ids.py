"""A request's id: the one its client sent (REST `X-Request-ID`, gRPC `x-request-id` metadata) when it is well
formed, else a new one. The fronts echo it on the answer and send it on to the handler; every log line about the
request quotes it, so a user can quote it back. Well formed: what a log line can hold as it is (no spaces, quotes
or control characters), of a length a person can quote."""

from __future__ import annotations

import re
import uuid

WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def well_formed(text: str | None) -> bool:
    return bool(text) and WELL_FORMED.fullmatch(text) is not None


def request_id(presented: str | None) -> str:
    """The client's id when well formed, else a new one (32 hex digits)."""
    return presented if well_formed(presented) else uuid.uuid4().hex  # type: ignore[return-value]
