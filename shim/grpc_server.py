"""The gRPC front: TF Serving's gRPC API on port 8500, beside the REST shim, from the same TorchServe.

`python -m fastai_serving_shim.grpc_server` serves with the shim's settings (FASTAI_SERVING_* variables);
scripts/serve starts it. Besides TF Serving's PredictionService and ModelService it serves
gRPC's standard health service (Kubernetes gRPC probes: SERVING while every model has a ready
worker) and server reflection (grpcurl lists and calls the API). On SIGTERM it reports
NOT_SERVING, refuses new calls, lets the calls in flight finish (`graceful_timeout_s`, as the
REST shim does), then exits. While scripts/serve drains, health says NOT_SERVING and calls are still served.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fastai_serving import defaults
from fastai_serving_protos import tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_shim import listener
from fastai_serving_shim.grpc_services import ModelService, PredictionService, Unimplemented
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings

logger = logging.getLogger("fastai_serving.grpc")

SERVICES = tensorflow_serving_pb2.DESCRIPTOR.services_by_name
PREDICTION_SERVICE = SERVICES["PredictionService"].full_name
MODEL_SERVICE = SERVICES["ModelService"].full_name


def address(host: str, port: int) -> str:
    """host:port as gRPC binds it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Readiness:
    """Keeps the health service's answers current: "" and PredictionService SERVING while every model can serve."""

    def __init__(
        self, service: Service, servicer: health.HealthServicer, interval_s: float = defaults.GRPC_HEALTH_POLL_S
    ) -> None:
        self.service, self.servicer, self.interval_s = service, servicer, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpc-readiness", daemon=True)

    def check(self) -> bool:
        """Ask the service now (the REST front's GET /ready), and publish the answer."""
        ready = self.service.readiness().ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (health.OVERALL_HEALTH, PREDICTION_SERVICE):
            self.servicer.set(service, status)
        return ready

    def start(self) -> None:
        self.servicer.set(MODEL_SERVICE, health_pb2.HealthCheckResponse.SERVING)  # status answers while models load
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.check()


class GrpcFront:
    """The gRPC server with its services, bound to the shim's host and `grpc_port`; `start`, then `stop`."""

    def __init__(self, settings: Settings, service: Service | None = None) -> None:
        self.settings = settings
        self.service = service or Service(settings)
        limit = settings.max_body_bytes  # the REST body limit, each way: larger messages get RESOURCE_EXHAUSTED
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port already taken fails here, never shared
            ],
        )
        tensorflow_serving_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.service), self.server
        )
        tensorflow_serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.service), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.server.add_generic_rpc_handlers((Unimplemented(),))  # after the services: only their unknown methods
        reflection.enable_server_reflection(
            (PREDICTION_SERVICE, MODEL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.readiness = Readiness(self.service, self.health)
        self.port = self.server.add_insecure_port(address(settings.host, settings.grpc_port))

    def start(self) -> GrpcFront:
        self.server.start()
        self.readiness.start()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, take no new handshake, let calls in flight finish within the grace, then stop.

        Connections already queued at the listener are accepted first, so none is reset (listener.quiesce).
        """
        self.readiness.stop()
        self.health.enter_graceful_shutdown()
        for own in listener.own_listeners(self.port):
            listener.quiesce(own, timeout_s=defaults.FRONT_STOP_MARGIN_S)
            own.close()
        self.server.stop(self.settings.graceful_timeout_s if grace_s is None else grace_s).wait()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="grpc: %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        front = GrpcFront(settings).start()
    except RuntimeError as error:  # the port is taken, or the address is not this machine's
        print(f"grpc: cannot serve on {address(settings.host, settings.grpc_port)}: {error}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"grpc: TF Serving's gRPC API on {address(settings.host, front.port)}", flush=True)
    stopping.wait()
    front.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
