"""Choosing the predictor for `--protocol`: REST (rest_predictor.py) or gRPC (grpc_predictor.py, imported only
for `--protocol grpc`, so a REST run needs neither grpcio nor protobuf). What a predictor raises: predictor.py."""

from __future__ import annotations

import threading

from . import defaults
from .concurrency import UNOBSERVED, Observer
from .credentials import NO_CREDENTIALS, Credentials
from .predictor import Predictor
from .rest_predictor import RestPredictor
from .retry import DEFAULT_BACKOFF, Backoff

PROTOCOLS = ("rest", "grpc")


def make_predictor(
    protocol: str,
    server: str,
    model: str | None,
    stopping: threading.Event,
    backoff: Backoff = DEFAULT_BACKOFF,
    timeout_s: float = defaults.TIMEOUT_S,
    credentials: Credentials = NO_CREDENTIALS,
    observer: Observer = UNOBSERVED,
) -> Predictor:
    """The predictor for `protocol`; `observer` (the concurrency controller) hears how each attempt went."""
    if protocol == "rest":
        return RestPredictor(server, model, stopping, backoff, timeout_s, credentials, observer)
    if protocol == "grpc":
        try:  # only here: the REST client needs neither grpcio nor protobuf
            from .grpc_predictor import GrpcPredictor
        except ImportError as error:
            raise ValueError(
                f"--protocol grpc needs grpcio and protobuf ({error}): pip install 'fastai-serving-client[grpc]' "
                "(from a checkout: pip install './client[grpc]'), or use --protocol rest"
            ) from error
        return GrpcPredictor(server, model, stopping, backoff, timeout_s, credentials, observer)
    raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
