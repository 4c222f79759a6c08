"""The shim's settings: one place, each read from a FASTAI_SERVING_* environment variable.

Defaults come from `fastai_serving.defaults`; the README's table is checked against this class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from fastai_serving import defaults
from fastai_serving.config import settings_from

ENV_PREFIX = "FASTAI_SERVING_"
_TORCHSERVE = f"http://{defaults.LOOPBACK}"


@dataclass(frozen=True)
class Settings:
    upstream: str = f"{_TORCHSERVE}:{defaults.INFERENCE_PORT}"  # TorchServe's inference API
    management: str = f"{_TORCHSERVE}:{defaults.MANAGEMENT_PORT}"  # TorchServe's management API
    default_model: str = ""  # behind /analyze; "" = the only model TorchServe serves
    ready_models: str = ""  # comma-separated models GET /ready waits for; "" = the store's and every one registered
    store_models: str = ""  # the model store's archives, comma-separated (set by scripts/serve): waited for from start
    host: str = defaults.SHIM_HOST  # the shim's address
    port: int = defaults.SHIM_PORT  # the shim's port
    max_body_bytes: int = defaults.MAX_BODY_BYTES  # larger request bodies get 413 (gRPC: messages, each way)
    predict_timeout_s: float = defaults.PREDICT_TIMEOUT_S  # a prediction's deadline, then 504
    status_timeout_s: float = defaults.STATUS_TIMEOUT_S  # status and management calls, then 503
    retry_s: float = defaults.RETRY_AFTER_WORKER_DEATH_S  # after a worker death, wait this long for its restart
    drain_s: float = defaults.DRAIN_S  # after SIGTERM, still serve this long while readiness fails (scripts/serve)
    graceful_timeout_s: int = defaults.GRACEFUL_TIMEOUT_S  # then accepted requests get this long to finish
    drain_file: str = ""  # while this file exists the shim is draining: /ready answers 503 (set by scripts/serve)
    torchserve_metrics: str = f"{_TORCHSERVE}:{defaults.METRICS_PORT}/metrics"  # re-exported by GET /metrics
    workers: int = defaults.SHIM_WORKERS  # gunicorn worker processes
    threads: int = defaults.SHIM_THREADS  # threads per gunicorn worker: concurrent requests
    grpc_port: int = defaults.GRPC_PORT  # the gRPC front's port (on `host`)
    grpc_threads: int = defaults.GRPC_THREADS  # the gRPC front's threads: concurrent calls
    # Slow and idle clients (docs/reliability.md): the REST front's proxy (scripts/nginx.conf) and gRPC's limits.
    header_timeout_s: float = defaults.HEADER_TIMEOUT_S  # a request's headers must all arrive within this
    body_timeout_s: float = defaults.BODY_TIMEOUT_S  # a body may pause at most this long between two reads
    keepalive_timeout_s: float = defaults.KEEPALIVE_TIMEOUT_S  # an idle keep-alive connection is closed after this
    max_connections: int = defaults.MAX_CONNECTIONS  # open connections per proxy worker; past it, closed at once
    max_requests: int = defaults.MAX_REQUESTS  # REST requests in flight; past it, 503 at once
    proxy_workers: int = defaults.PROXY_WORKERS  # nginx worker processes
    health_threads: int = defaults.HEALTH_THREADS  # shim threads of their own for GET and HEAD requests
    grpc_receive_timeout_s: float = defaults.GRPC_RECEIVE_TIMEOUT_S  # a call's message must arrive within this
    grpc_max_concurrent_rpcs: int = (
        defaults.GRPC_MAX_CONCURRENT_RPCS
    )  # gRPC calls in flight; past it, RESOURCE_EXHAUSTED
    grpc_max_concurrent_streams: int = defaults.GRPC_MAX_CONCURRENT_STREAMS  # calls open on one HTTP/2 connection
    grpc_min_ping_interval_s: float = defaults.GRPC_MIN_PING_INTERVAL_S  # clients pinging more often get GOAWAY
    grpc_max_connection_idle_s: float = defaults.GRPC_MAX_CONNECTION_IDLE_S  # a connection with no call: GOAWAY after
    grpc_max_connection_age_s: float = defaults.GRPC_MAX_CONNECTION_AGE_S  # every connection: GOAWAY after (rebalance)
    grpc_max_connection_age_grace_s: float = defaults.GRPC_MAX_CONNECTION_AGE_GRACE_S  # then calls get this long
    # Load (docs/reliability.md): what is refused before the queue, and how long a request may wait in it.
    queue_target_s: float = defaults.QUEUE_TARGET_S  # a model's expected wait kept below this; 0: two batches' time
    queue_interval_s: float = defaults.QUEUE_INTERVAL_S  # how long a wait must stand over the target to be refused
    max_queue_s: float = 0.0  # every model's longest wait for a request without a deadline; 0: each archive's own
    admission_file: str = ""  # the fronts' shared count of instances in flight (set by scripts/serve); "": this process
    # Who may call (docs/security.md): off by default, so TF Serving's clients work unchanged.
    api_keys_file: str = ""  # API keys, "name: key" a line, re-read when it changes; "" = no key asked
    keyed_health: bool = False  # health (/, /ready, /v2/health/*, gRPC health) takes a key too; off: open for probes
    metrics_access: str = defaults.METRICS_ACCESS  # GET /metrics: open, keyed (an API key), or loopback (this machine)
    tls_cert_file: str = ""  # the fronts' certificate chain (PEM): TLS on both ports, re-read when it changes
    tls_key_file: str = ""  # its private key (PEM)
    tls_client_ca_file: str = ""  # with TLS: every client must show a certificate signed by this CA (mTLS)
    # Observability (docs/observability.md).
    access_log: bool = defaults.ACCESS_LOG  # one JSON line per request on stdout (shim/access_log.py)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from FASTAI_SERVING_* variables; unset or empty ones keep their defaults."""
        environ = os.environ if environ is None else environ
        return settings_from(cls, {field.name: environ.get(env_name(field.name)) for field in fields(cls)}, env_name)

    def __post_init__(self) -> None:
        if self.metrics_access not in defaults.METRICS_ACCESS_CHOICES:
            choices = ", ".join(defaults.METRICS_ACCESS_CHOICES)
            raise ValueError(f"{env_name('metrics_access')}={self.metrics_access!r}: use one of {choices}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(f"TLS needs both {env_name('tls_cert_file')} and {env_name('tls_key_file')}")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError(f"{env_name('tls_client_ca_file')} needs TLS: set the certificate and key too")

    @property
    def keyed(self) -> bool:
        """Whether the fronts ask for API keys."""
        return bool(self.api_keys_file)

    @property
    def tls(self) -> bool:
        """Whether both fronts speak TLS."""
        return bool(self.tls_cert_file)

    def ready_model_names(self) -> list[str]:
        return _names(self.ready_models)

    def store_model_names(self) -> list[str]:
        return _names(self.store_models)


def _names(comma_separated: str) -> list[str]:
    return [name.strip() for name in comma_separated.split(",") if name.strip()]


def env_name(field_name: str) -> str:
    """The environment variable of a setting: FASTAI_SERVING_<NAME>."""
    return ENV_PREFIX + field_name.upper()
