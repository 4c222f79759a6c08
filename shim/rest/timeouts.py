"""A REST client's deadline: the X-Request-Timeout header (or Request-Timeout), in seconds from now.

`X-Request-Timeout: 5`, `5.5`, `5s` or `500ms`. gRPC carries deadlines in the protocol and the Open Inference
Protocol in its `timeout` parameter; plain HTTP has no standard header, so this one is documented
(docs/reliability.md). Most REST clients send none: then the server's own queue target and each model's
longest wait in the queue decide (shim/admission.py, contract/deadlines.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from fastai_serving.contract.errors import BadInput

TIMEOUT_HEADERS = ("X-Request-Timeout", "Request-Timeout")
_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$", re.IGNORECASE)


def request_timeout_s(headers: Mapping[str, str]) -> float | None:
    """The client's deadline in seconds from now, or None when it sent none; BadInput for one that is not a duration."""
    for name in TIMEOUT_HEADERS:
        text = headers.get(name)
        if text is None:
            continue
        match = _VALUE.match(text)
        seconds = float(match[1]) / (1000 if (match[2] or "").lower() == "ms" else 1) if match else math.nan
        if not seconds > 0:
            raise BadInput(f"{name} {text[:40]!r} is not a duration: send seconds (5, 2.5, 5s) or milliseconds (500ms)")
        return seconds
    return None
