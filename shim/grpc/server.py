"""The gRPC front: TF Serving's gRPC API on port 8500, beside the REST shim, from the same TorchServe.

`python -m fastai_serving_shim.grpc.server` serves with the shim's settings (FASTAI_SERVING_* variables);
scripts/serve starts it. Besides TF Serving's PredictionService and ModelService, and the Open
Inference Protocol's inference.GRPCInferenceService (KServe v2; ServerReady false while draining), it serves
gRPC's standard health service (Kubernetes gRPC probes: SERVING while every model has a ready
worker) and server reflection (grpcurl lists and calls the API). On SIGTERM it reports
NOT_SERVING, refuses new calls (UNAVAILABLE: retried elsewhere), lets the calls in flight finish (`graceful_timeout_s`, as the
REST shim does), then exits. While scripts/serve drains, health says NOT_SERVING and calls are still served.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import _async as async_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fastai_serving import defaults
from fastai_serving_protos import open_inference_pb2_grpc, tensorflow_serving_pb2, tensorflow_serving_pb2_grpc
from fastai_serving_shim import listener
from fastai_serving_shim.access import Access, KeyFileError
from fastai_serving_shim.addresses import host_port
from fastai_serving_shim.certificates import TlsFilesError
from fastai_serving_shim.grpc.access import AccessCheck
from fastai_serving_shim.grpc.limits import ReceiveDeadline, server_options
from fastai_serving_shim.grpc.stopping import StopGate
from fastai_serving_shim.grpc.tf_serving import ModelService, PredictionService, Unimplemented
from fastai_serving_shim.grpc.tls import ServerCertificates
from fastai_serving_shim.grpc.v2 import SERVICE as V2_SERVICE
from fastai_serving_shim.grpc.v2 import GRPCInferenceService
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings

logger = logging.getLogger("fastai_serving.grpc")

SERVICES = tensorflow_serving_pb2.DESCRIPTOR.services_by_name
PREDICTION_SERVICE = SERVICES["PredictionService"].full_name
MODEL_SERVICE = SERVICES["ModelService"].full_name


class Readiness:
    """Keeps the health service's answers current: "" and PredictionService SERVING while every model can serve."""

    def __init__(
        self, service: Service, publish: Callable[[str, int], None], interval_s: float = defaults.GRPC_HEALTH_POLL_S
    ) -> None:
        self.service, self.publish, self.interval_s = service, publish, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpc-readiness", daemon=True)

    def check(self) -> bool:
        """Ask the service now (the REST front's GET /ready), and publish the answer."""
        ready = self.service.readiness().ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (health.OVERALL_HEALTH, PREDICTION_SERVICE):
            self.publish(service, status)
        return ready

    def start(self) -> None:
        self.publish(MODEL_SERVICE, health_pb2.HealthCheckResponse.SERVING)  # status answers while models load
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.check()


class GrpcFront:
    """The gRPC server with its services, bound to the shim's host and `grpc_port`; `start`, then `stop`.

    A `grpc.aio` server on an event loop in a thread of its own: HTTP/2, and every call's request
    message, are read there (a slow or idle client costs no thread); the servicers run on
    `grpc_threads` threads once a call's message is whole (limits.ReceiveDeadline).
    """

    def __init__(self, settings: Settings, service: Service | None = None) -> None:
        self.settings = settings
        self.service = service or Service(settings)
        self.access = Access(
            settings
        )  # before anything starts: a key file or certificate that cannot be used fails here
        self.certificates = ServerCertificates(settings) if settings.tls else None
        self.pool = ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="grpc")
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._loop_thread.start()
        self.health = async_health.HealthServicer()  # answers on the event loop: never behind predictions
        self.gate = StopGate()  # at the stop: new calls UNAVAILABLE while those in flight finish
        try:
            self.server, self.port = self._on_loop(self._build())
        except BaseException:
            self._close_loop()
            raise
        self.readiness = Readiness(self.service, self._publish)

    async def _build(self) -> tuple[grpc.aio.Server, int]:
        settings = self.settings
        limit = settings.max_body_bytes  # the REST body limit, each way: larger messages get RESOURCE_EXHAUSTED
        server = grpc.aio.server(
            migration_thread_pool=self.pool,
            # The gate, then who may call (before the message is read), then the message read within its deadline.
            interceptors=[
                self.gate,
                AccessCheck(self.access, self.service),
                ReceiveDeadline(settings.grpc_receive_timeout_s, self.pool),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port already taken fails here, never shared
                *server_options(settings),
            ],
        )
        tensorflow_serving_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.service), server)
        tensorflow_serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.service), server)
        open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            GRPCInferenceService(self.service), server
        )  # the Open Inference Protocol (KServe v2) beside TF Serving's API
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers((Unimplemented(),))  # after the services: only their unknown methods
        reflection.enable_server_reflection(
            (PREDICTION_SERVICE, MODEL_SERVICE, V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = host_port(settings.host, settings.grpc_port)
        if self.certificates is not None:
            return server, server.add_secure_port(address, self.certificates.credentials())
        return server, server.add_insecure_port(address)

    def _on_loop(self, coroutine):
        """Run a coroutine on the front's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _publish(self, service: str, status: int) -> None:
        self._on_loop(self.health.set(service, status))

    def read_again(self) -> None:
        """SIGHUP: the key file now, and the certificate files at the next handshake, whether or not they changed."""
        if self.access.keys is not None:
            self.access.keys.reload()
        if self.certificates is not None:
            self.certificates.watched.forget()

    def start(self) -> GrpcFront:
        self._on_loop(self.server.start())
        self.readiness.start()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, take no new handshake, refuse new calls (UNAVAILABLE) while the calls in flight
        finish within the grace, then stop.

        Connections already queued at the listener are accepted first, so none is reset (listener.quiesce; where the
        kernel refuses this process the filter, a plain close, said in the log).
        """
        self.readiness.stop()
        self._on_loop(self.health.enter_graceful_shutdown())
        for own in listener.own_listeners(self.port):
            quiesced = listener.quiesce(own, timeout_s=defaults.FRONT_STOP_MARGIN_S)
            print(f"grpc: stopping: {quiesced.how}", flush=True)
            own.close()
        self._on_loop(self._stop(self.settings.graceful_timeout_s if grace_s is None else grace_s))
        self._close_loop()

    async def _stop(self, grace_s: float) -> None:
        self.gate.close()
        left_s = await self.gate.drained(grace_s)
        await self.server.stop(left_s)  # calls still running past the grace are cancelled

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=defaults.FRONT_STOP_MARGIN_S)
        self.pool.shutdown(wait=False)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="grpc: %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        front = GrpcFront(settings).start()
    except RuntimeError as error:  # the port is taken, or the address is not this machine's
        print(f"grpc: cannot serve on {host_port(settings.host, settings.grpc_port)}: {error}", file=sys.stderr)
        return 1
    except (KeyFileError, TlsFilesError) as error:
        print(f"grpc: cannot serve: {error}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: front.read_again())
    print(f"grpc: TF Serving's gRPC API on {host_port(settings.host, front.port)}", flush=True)
    stopping.wait()
    front.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
