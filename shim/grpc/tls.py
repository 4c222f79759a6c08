"""The gRPC front's TLS: grpc's server credentials, re-read when the certificate files change.

grpc asks `_fetch` at each new connection's handshake; it reads the files again only when a stat
says they changed (at most once a second), so a certificate replaced on disk (cert-manager, a
Kubernetes Secret) is served to new connections without a restart while open ones go on. A pair that
does not load (a certificate written before its key) keeps the one served before, said in the log
without the files' paths. With a client CA, a client without a certificate it signed is refused at
the handshake.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from fastai_serving_shim.certificates import TlsFilesError, check_pair
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.watched import Watched

logger = logging.getLogger("fastai_serving.tls")


class ServerCertificates:
    """The front's certificate, key and client CA, as grpc's dynamic server credentials."""

    def __init__(self, settings: Settings) -> None:
        self.cert_file, self.key_file, self.ca_file = (
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file,
        )  # fmt: skip
        self.watched = Watched([path for path in (self.cert_file, self.key_file, self.ca_file) if path])
        self._initial = self._read()  # files that cannot be served fail the start

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=bool(self.ca_file)
        )

    def _read(self) -> grpc.ServerCertificateConfiguration:
        check_pair(self.cert_file, self.key_file, self.ca_file)
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        roots = Path(self.ca_file).read_bytes() if self.ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """At each handshake: a new configuration if the files changed and load, else None (keep the current)."""
        if not self.watched.changed():
            return None
        try:
            configuration = self._read()
        except (TlsFilesError, OSError) as error:
            logger.error("TLS: %s: still serving the certificate read before", error)
            return None
        logger.warning("TLS: the certificate files changed: new connections get the new certificate")
        return configuration
