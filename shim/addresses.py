"""host:port as the fronts, TorchServe's clients and nginx write it: IPv6 addresses in brackets, the wildcards reachable."""

from __future__ import annotations

from fastai_serving import defaults

WILDCARDS = {"0.0.0.0": defaults.LOOPBACK, "": defaults.LOOPBACK, "::": "::1", "[::]": "::1"}


def host_port(host: str, port: int) -> str:
    """host:port, an IPv6 address in brackets ([::1]:8500), as gRPC binds it and URLs hold it."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable(host: str) -> str:
    """Where a server bound to `host` is reached from this machine: a wildcard address is its loopback."""
    return WILDCARDS.get(host, host)


def http_url(host: str, port: int) -> str:
    """http://host:port of a server bound to `host` (a wildcard: this machine's loopback)."""
    return f"http://{host_port(reachable(host), port)}"
