"""The REST front's access check: before any route reads a body, the caller's API key (shim/access.py).

A key comes as `Authorization: Bearer <key>`, or as `X-API-Key: <key>` for clients that can set
only a plain header. /metrics from loopback: the client's address as nginx saw it (a header nginx
sets, dropping any client's own), or the peer's own where gunicorn serves alone.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, g, request

from fastai_serving_shim.access import Access, Route, bearer_key

FRONT = "rest"
PEER_HEADER = "X-Fastai-Serving-Peer"  # set by scripts/nginx.conf to the client's address
API_KEY_HEADER = "X-API-Key"
HOW = f"send Authorization: Bearer <key> (or {API_KEY_HEADER}: <key>)"
ROUTES = {
    "api.alive": Route.HEALTH,
    "api.ready": Route.HEALTH,
    "v2.live": Route.HEALTH,
    "v2.ready": Route.HEALTH,
    "api.prometheus_metrics": Route.METRICS,
    "api.openapi_document": Route.PUBLIC,
}  # every other endpoint, and a path no route takes, is a model route


def require_access(app: Flask, access: Access) -> None:
    """Check every request's access before its route runs; a refusal is answered by the front's error handler."""

    @app.before_request
    def checked() -> None:
        route = ROUTES.get(request.endpoint or "", Route.MODEL)
        if route is not Route.PUBLIC:
            g.metric["route"] = request.url_rule.rule if request.url_rule else "unmatched"  # a template, not the path
            presented = bearer_key(request.headers.get("Authorization")) or request.headers.get(API_KEY_HEADER)
            g.caller = access.check(FRONT, route, presented, HOW, from_loopback)


def from_loopback() -> bool:
    """Whether the client is on this machine: the peer's address where it has one (gunicorn alone, on TCP), else
    nginx's word for it (the peer is then nginx, on a unix socket, whose address is no IP address)."""
    peer = _ip(request.remote_addr or "")
    client = peer if peer is not None else _ip(request.headers.get(PEER_HEADER, ""))
    return client is not None and client.is_loopback


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
