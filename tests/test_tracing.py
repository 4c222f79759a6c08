"""OpenTelemetry traces are off unless the standard OTEL_* variables ask for them, and off cost nothing: no
OpenTelemetry import. tests/test_observability.py sends traced requests through scripts/serve to a real OTLP
endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastai_serving.tracing import protocol, wanted


@pytest.mark.parametrize(
    "environ, on",
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "tiles"}, False),  # a name alone says nowhere to send them
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_traces_are_on_only_where_the_otel_variables_name_an_endpoint(environ, on):
    assert wanted(environ) is on


@pytest.mark.parametrize(
    "environ, chosen",
    [
        ({}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "http/protobuf",
        ),
    ],
)
def test_the_protocol_is_the_variables_and_else_the_specifications_default(environ, chosen):
    assert protocol(environ) == chosen


def test_with_the_otel_variables_unset_no_request_imports_opentelemetry():
    program = """
import json, sys
from fake_torchserve import FakeTorchServe
from fastai_serving_shim.rest.app import create_app
from fastai_serving_shim.settings import Settings
client = create_app(Settings(access_log=False), upstream=FakeTorchServe()).test_client()
body = json.dumps({"instances": [{"b64": "aGk="}]})
headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
assert client.post("/v1/models/digits:predict", data=body, headers=headers).status_code == 200
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), environ.get("PYTHONPATH", "")])
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environ, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_over_grpc_a_span_reaches_a_real_otlp_grpc_endpoint():
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the protocol's name)
            received.extend(span.name for r in request.resource_spans for s in r.scope_spans for span in s.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        program = "from fastai_serving import tracing\nwith tracing.span('over-grpc'):\n    pass\n"
        environ = {
            **{name: value for name, value in os.environ.items() if not name.startswith("OTEL_")},
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
        ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environ, timeout=120)
        assert ran.returncode == 0, ran.stderr
    finally:
        server.stop(0)
    assert received == ["over-grpc"]  # sent when the process ended: the provider flushes at exit
