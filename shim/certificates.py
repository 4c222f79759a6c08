"""The fronts' certificate files: whether a certificate and its key load as a pair, and a client CA file as CAs.

serve checks them before it starts anything (scripts/security.py) and the gRPC front at each reading
(shim/grpc/tls.py); Python's ssl reads them, so serve loads no gRPC (whose fork handlers would run in
each child serve starts).
"""

from __future__ import annotations

import ssl


class TlsFilesError(ValueError):
    """Certificate files that cannot be served: the message names the setting, not the path."""


def check_pair(cert_file: str, key_file: str, client_ca_file: str = "") -> None:
    """Raise TlsFilesError unless the certificate and key load as a pair (and the CA file as CAs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TlsFilesError(f"the TLS certificate and key do not load as a pair ({type(error).__name__})") from None
    if client_ca_file:
        try:
            context.load_verify_locations(client_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise TlsFilesError(f"the client CA file does not load ({type(error).__name__})") from None
