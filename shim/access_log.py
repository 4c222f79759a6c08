"""The access log: one JSON line per request on stdout, written by the front that answered it.

Fields: the time it was answered, its id (the client's X-Request-ID or `x-request-id`, else a new one), the front
and protocol, the route (a template, never the path), the model and version that answered, its instances, the
status (HTTP's, or the gRPC code's name), its total time at the front and its time in TorchServe's queue (null
where no batch ran it). Each line is one write, so the fronts' processes sharing serve's stdout never interleave
within a line. FASTAI_SERVING_ACCESS_LOG=off turns it off.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone

from fastai_serving_shim.observed import Observed

_lock = threading.Lock()
MAX_NAME_CHARS = 128  # a model name as the client wrote it, when it named none served


def line(record: Observed | None, front: str, protocol: str, route: str, model: str, status: str,
         seconds: float) -> str:  # fmt: skip
    """One request's access line (no newline)."""
    return json.dumps(
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": record.request_id if record else "",
            "front": front,
            "protocol": protocol,
            "route": route,
            "model": (record.model if record and record.model else model)[:MAX_NAME_CHARS],
            "version": record.version if record else "",
            "instances": record.instances if record else None,
            "status": status,
            "seconds": round(seconds, 6),
            "queue_seconds": None if record is None or record.queue_s is None else round(record.queue_s, 6),
        },
        ensure_ascii=True,
    )


def write(record: Observed | None, front: str, protocol: str, route: str, model: str, status: str,
          seconds: float) -> None:  # fmt: skip
    text = line(record, front, protocol, route, model, status, seconds) + "\n"
    with _lock:
        sys.stdout.write(text)
        sys.stdout.flush()
