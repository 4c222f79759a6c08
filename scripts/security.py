"""What `serve` says and does about who may call: the fronts' API keys and TLS (docs/security.md).

Before anything starts, the key file and the certificate files are checked (a file that cannot be used
is refused at once, named by its setting, never by its path); at start serve says whether keys and TLS
are on, and, when a front binds a non-loopback address with neither, says so once, plainly. While it
runs, a certificate file whose bytes change is handed to nginx (SIGHUP: new connections get it, open ones
finish); the gRPC front reads its own (shim/grpc/tls.py), and every front reads the key file itself.
"""

from __future__ import annotations

import ipaddress

from fastai_serving_shim.access import ApiKeys, KeyFileError
from fastai_serving_shim.certificates import TlsFilesError, check_pair
from fastai_serving_shim.settings import Settings, env_name
from fastai_serving_shim.watched import Watched


def refusal(settings: Settings, proxied: bool) -> str | None:
    """Why these settings cannot be served (a key file or certificates that cannot be used), or None."""
    if settings.tls and not proxied:
        return "TLS on the REST front needs nginx in front (drop --no-proxy)"
    try:
        if settings.keyed:
            ApiKeys(settings.api_keys_file)
        if settings.tls:
            check_pair(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except (KeyFileError, TlsFilesError) as error:
        return str(error)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every address)


def announcement(settings: Settings, host: str, grpc: bool) -> list[str]:
    """serve's lines about access at start: keys, TLS, and the plain warning where a public front has neither."""
    fronts = "the REST and gRPC fronts" if grpc else "the REST front"
    if settings.keyed:
        names = ApiKeys(settings.api_keys_file).names()
        health = "keyed" if settings.keyed_health else "open"
        keys = f"on ({len(names)}: {', '.join(names)}); health {health}, /metrics {settings.metrics_access}"
    else:
        keys = f"off; /metrics {settings.metrics_access}"
    lines = [f"serve: API keys: {keys}"]
    if settings.tls:
        clients = "client certificates required" if settings.tls_client_ca_file else "no client certificates"
        lines.append(f"serve: TLS: on for {fronts} (REST: HTTP/1.1 and HTTP/2); {clients}")
    else:
        lines.append("serve: TLS: off")
    if not is_loopback(host) and not settings.keyed and not settings.tls:
        lines.append(
            f"serve: WARNING: {fronts} listen on {host or 'every address'} with no API keys and no TLS: anyone who "
            f"reaches these ports can run the models, read their metadata and /metrics, and see the traffic. Set "
            f"{env_name('api_keys_file')} and {env_name('tls_cert_file')} (docs/security.md), or keep the ports "
            "behind your own network controls"
        )
    return lines


class CertificateWatch:
    """The REST front's certificate files: whether nginx should read them again (SIGHUP: new connections get them,
    open ones finish), which is only when their bytes differ from what it read last and they load as a pair.

    A reload is not free: nginx's old workers close their idle kept-alive connections, and a client that sends
    on one at that moment sees it dropped. So a file touched, or a SIGHUP to `serve` for the API keys alone,
    leaves nginx and its connections alone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        files = [settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file]
        self.watched = Watched([path for path in files if path])
        self.served = self._contents()  # what nginx read at its start

    def changed(self) -> tuple[bool, str]:
        """(whether nginx should read them again now, what serve says about it; "" for nothing): the periodic look."""
        return self._compare() if self.watched.changed() else (False, "")

    def read_again(self) -> tuple[bool, str]:
        """The same, on SIGHUP: the files' bytes compared whatever their stat says (a file rewritten in place)."""
        self.watched.seen_now()
        return self._compare()

    def _compare(self) -> tuple[bool, str]:
        contents = self._contents()
        if contents == self.served:
            return False, ""
        try:
            check_pair(self.settings.tls_cert_file, self.settings.tls_key_file, self.settings.tls_client_ca_file)
        except TlsFilesError as error:
            return False, f"serve: TLS: {error}: the REST front keeps serving the certificate read before"
        self.served = contents
        return True, "serve: TLS: the certificate files changed: the REST front serves them to new connections"

    def _contents(self) -> tuple[bytes | None, ...]:
        read = []
        for path in self.watched.paths:
            try:
                with open(path, "rb") as file:
                    read.append(file.read())
            except OSError:
                read.append(None)
        return tuple(read)
