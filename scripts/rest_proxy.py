"""The REST front's I/O layer: nginx in front of the shim's gunicorn, configured from the shim's settings.

nginx reads each request whole (its header and body deadlines, the body limit) before the shim
sees it, holds idle keep-alive connections without a thread, caps connections and requests in
flight, and sends GET and HEAD requests to a pool of shim threads of their own, so health never
waits behind predictions. scripts/serve renders `nginx.conf` (beside this module) into its run
folder and starts nginx as its child; the shim's two gunicorns listen on unix sockets there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fastai_serving import defaults
from fastai_serving_shim.addresses import host_port
from fastai_serving_shim.rest.access import PEER_HEADER
from fastai_serving_shim.rest.errors import REFUSED_METHOD_HEADER

TEMPLATE = Path(__file__).with_name("nginx.conf")
FIELD = re.compile(r"{{(\w+)}}")
# Where nginx is looked for beyond PATH: Debian installs it in /usr/sbin, which a user's PATH may lack.
NGINX_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian and source builds put it."""
    return shutil.which("nginx") or next((place for place in NGINX_PLACES if Path(place).is_file()), None)


def listen_address(host: str, port: int) -> str:
    """host:port as nginx's `listen` takes it (an IPv6 address in brackets; no host: every address)."""
    return str(port) if host == "" else host_port(host, port)


def render(settings, listen: str, app_socket: Path, health_socket: Path, run_dir: Path) -> str:
    """nginx.conf for one front: `settings` is the shim's Settings (its deadlines and caps)."""
    values = {
        "workers": settings.proxy_workers,
        # Started as root (a development machine), nginx would hand its workers to `nobody`, who cannot
        # reach the run folder: they stay root there. The image and Kubernetes run it as a user of its own.
        "user": "user root;\n" if os.geteuid() == 0 else "",
        "worker_connections": settings.max_connections,
        "run_dir": run_dir,
        "header_timeout_s": _seconds(settings.header_timeout_s),
        "body_timeout_s": _seconds(settings.body_timeout_s),
        "keepalive_timeout_s": _seconds(settings.keepalive_timeout_s),
        "max_body_bytes": settings.max_body_bytes,
        "max_requests": settings.max_requests,
        "app_address": f"unix:{app_socket}",
        "health_address": f"unix:{health_socket}",
        "listen": listen,
        "refused_method_header": REFUSED_METHOD_HEADER,
        "peer_header": PEER_HEADER,
        "listen_tls": " ssl http2" if settings.tls else "",
        "tls": tls_block(settings),
        "graceful_timeout_s": _seconds(settings.graceful_timeout_s),
        "connect_timeout_s": _seconds(settings.status_timeout_s),
        # The shim answers 504 itself when a prediction's deadline passes: nginx waits a little longer.
        "read_timeout_s": _seconds(settings.predict_timeout_s + 30),
    }
    return FIELD.sub(lambda match: str(values[match.group(1)]), TEMPLATE.read_text())


def tls_block(settings) -> str:
    """The server block's TLS directives: modern protocols and ciphers, HTTP/2 beside HTTP/1.1, and with a client CA,
    a certificate required at the handshake itself (OpenSSL's VerifyMode Require). nginx reads the files again on
    SIGHUP, which scripts/serve sends when they change: new connections get the new certificate, open ones finish."""
    if not settings.tls:
        return ""
    lines = [
        f"ssl_certificate {settings.tls_cert_file};",
        f"ssl_certificate_key {settings.tls_key_file};",
        f"ssl_protocols {defaults.TLS_PROTOCOLS};",
        f"ssl_ciphers {defaults.TLS12_CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:tls:10m;",
        "ssl_session_timeout 1h;",
        "ssl_session_tickets off;  # a ticket key that never rotates would undo forward secrecy",
        "error_page 497 = @plain_http;",
    ]
    if settings.tls_client_ca_file:
        lines += [
            f"ssl_client_certificate {settings.tls_client_ca_file};",
            "ssl_verify_client on;",
            "ssl_conf_command VerifyMode Require;  # no certificate: the handshake fails, not a request after it",
            "error_page 495 496 = @bad_client_certificate;",
        ]
    return "".join(f"        {line}\n" for line in lines)


def write_config(settings, listen: str, run_dir: Path) -> tuple[Path, Path, Path]:
    """Render nginx.conf into `run_dir` (with its temp folders); returns (config, app socket, health socket)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / temp).mkdir(exist_ok=True)
    app_socket, health_socket = run_dir / "app.sock", run_dir / "health.sock"
    config = run_dir / "nginx.conf"
    config.write_text(render(settings, listen, app_socket, health_socket, run_dir))
    return config, app_socket, health_socket


def nginx_command(nginx: str, config: Path, run_dir: Path) -> list[str]:
    """nginx in the foreground with this config; -e: its startup errors go to stderr, not /var/log (read-only)."""
    return [nginx, "-p", str(run_dir), "-c", str(config), "-e", "stderr"]


def inherited(listener_fd: int) -> dict[str, str]:
    """The environment that hands nginx a listening socket bound by its parent (nginx's own NGINX variable)."""
    return {"NGINX": f"{listener_fd};"}


def _seconds(value: float) -> int:
    """nginx takes whole seconds: round up, so a deadline is never shorter than the setting."""
    return max(1, int(-(-value // 1)))
