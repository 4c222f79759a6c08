"""The image's HEALTHCHECK: GET /ready on the REST front, over TLS where the fronts speak it (docs/security.md).

Its own port on loopback, as kubelet's HTTPS probes do: the certificate is not checked (the check is whether
the server is ready, not who it is), and /ready takes no key unless FASTAI_SERVING_KEYED_HEALTH is on.
Exit 0 when ready, 1 otherwise. The standard library only: it runs every 30 s.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

from fastai_serving import defaults


def ready_url(environ: dict[str, str]) -> str:
    scheme = "https" if environ.get("FASTAI_SERVING_TLS_CERT_FILE") else "http"
    return f"{scheme}://{defaults.LOOPBACK}:{environ.get('FASTAI_SERVING_PORT') or defaults.SHIM_PORT}/ready"


def main(environ: dict[str, str] | None = None) -> int:
    url = ready_url(dict(os.environ) if environ is None else environ)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # its own port: readiness, not identity
    try:
        with urllib.request.urlopen(url, timeout=defaults.STATUS_TIMEOUT_S * 2, context=context) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
