"""The shim's settings: one place, each read from an environment variable with a documented default."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    upstream: str = "http://127.0.0.1:8080"  # FASTAI_SERVING_UPSTREAM: TorchServe's inference API
    management: str = "http://127.0.0.1:8081"  # FASTAI_SERVING_MANAGEMENT: TorchServe's management API
    default_model: str = ""  # FASTAI_SERVING_DEFAULT_MODEL: behind /analyze; "" = the only registered model
    host: str = "0.0.0.0"  # FASTAI_SERVING_HOST: the shim's address
    port: int = 8501  # FASTAI_SERVING_PORT: the shim's port
    max_body_bytes: int = 64 * MIB  # FASTAI_SERVING_MAX_BODY_BYTES: larger request bodies get 413
    predict_timeout_s: float = 120.0  # FASTAI_SERVING_PREDICT_TIMEOUT_S: then 504
    status_timeout_s: float = 2.0  # FASTAI_SERVING_STATUS_TIMEOUT_S: status/metadata calls; then 503
    retry_after_worker_death_s: float = 60.0  # FASTAI_SERVING_RETRY_S: wait this long for a restarted worker, then 503
    workers: int = 2  # FASTAI_SERVING_WORKERS: gunicorn worker processes
    threads: int = 16  # FASTAI_SERVING_THREADS: threads per gunicorn worker (concurrent requests)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from FASTAI_SERVING_* variables; unset or empty ones keep their defaults."""
        environ = os.environ if environ is None else environ
        names = {field.name: _env_name(field.name) for field in fields(cls)}
        values = {}
        for field in fields(cls):
            raw = environ.get(names[field.name], "")
            if raw != "":
                kind = {"int": int, "float": float}.get(field.type, str)
                try:
                    values[field.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{names[field.name]}={raw!r} is not a valid {field.type}") from None
        return cls(**values)


def _env_name(field_name: str) -> str:
    special = {"retry_after_worker_death_s": "RETRY_S"}
    return "FASTAI_SERVING_" + special.get(field_name, field_name.upper())
