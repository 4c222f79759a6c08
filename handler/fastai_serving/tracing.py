"""OpenTelemetry traces: off unless the standard OTEL_* variables say where to send them.

On when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT names a collector, unless
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none; OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL chooses `grpc` or
`http/protobuf` (the specification's default), and the exporters read the rest of their variables themselves
(headers, timeouts, OTEL_BSP_* for the batching, OTEL_SERVICE_NAME). Off, nothing of OpenTelemetry is imported:
no exporter, no thread, no span, and every function here returns at once.

Each process makes its own provider on first use: gunicorn forks its workers, and a batch span processor's
thread must run in the process whose spans it sends. A W3C `traceparent` travels in REST headers and gRPC
metadata (both lower-case `traceparent`), and on the hop from a front to the handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)
SERVICE_NAME = "fastai-serving"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def protocol(environ: Mapping[str, str] = os.environ) -> str:
    """`grpc` or `http/protobuf`, as the variables say (the specification's default: `http/protobuf`)."""
    chosen = next((environ[name].strip() for name in _PROTOCOLS if environ.get(name, "").strip()), "http/protobuf")
    return "grpc" if chosen == "grpc" else "http/protobuf"


ON = wanted()  # read once: the hot path asks a constant
_lock = threading.Lock()
_tracers: dict[int, Any] = {}  # pid -> this process's tracer


def tracer() -> Any:
    """This process's tracer (made on first use), or None when traces are off."""
    if not ON:
        return None
    pid = os.getpid()
    if pid not in _tracers:
        with _lock:
            if pid not in _tracers:
                _tracers[pid] = _make_tracer()
    return _tracers[pid]


def _make_tracer() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    endpoint = next(os.environ[name] for name in _ENDPOINTS if os.environ.get(name, "").strip())
    logger.warning("fastai-serving traces: OTLP over %s to %s (process %d)", protocol(), endpoint, os.getpid())
    return provider.get_tracer("fastai_serving")


def parent_of(carrier: Mapping[str, str]) -> Any:
    """The trace context a `traceparent` (and `tracestate`) in `carrier` names; None when off or none came."""
    if not ON:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    lowered = {str(key).lower(): value for key, value in carrier.items()}
    return TraceContextTextMapPropagator().extract(lowered)


def inject(carrier: dict[str, str]) -> None:
    """The current span's `traceparent` into `carrier` (a request's headers); nothing when off."""
    if not ON:
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(carrier)


@contextlib.contextmanager
def span(name: str, parent: Any = None, kind: str = "INTERNAL", **attributes: Any) -> Iterator[Any]:
    """A span around a block, current within it (its children and `inject` see it); None when off.
    `parent`: a context from `parent_of` (default: the current span)."""
    traces = tracer()
    if traces is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with traces.start_as_current_span(
        name, context=parent, kind=SpanKind[kind], attributes=_attributes(attributes)
    ) as opened:
        yield opened


def started(name: str, parent: Any = None, kind: str = "SERVER", **attributes: Any) -> tuple[Any, Any]:
    """A span made current until `finished` (a front's request, whose start and end are separate hooks):
    (span, token), or (None, None) when off."""
    traces = tracer()
    if traces is None:
        return None, None
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    opened = traces.start_span(name, context=parent, kind=SpanKind[kind], attributes=_attributes(attributes))
    return opened, context.attach(trace.set_span_in_context(opened))


def finished(opened: Any, token: Any, name: str = "", **attributes: Any) -> None:
    """End a span `started` made, with more attributes (its status, say) and the name known by then."""
    if opened is None:
        return
    from opentelemetry import context

    if name:
        opened.update_name(name)
    opened.set_attributes(_attributes(attributes))
    opened.end()
    with contextlib.suppress(ValueError):  # a token of another context: the span still ends
        context.detach(token)


def record(name: str, parent: Any, start_ns: int, end_ns: int, links: tuple = (), **attributes: Any) -> Any:
    """A span already over (the handler's stages, timed as the batch ran), linked to `links` (span contexts):
    (a context whose current span it is, for its children; its span context), or None when off."""
    traces = tracer()
    if traces is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import Link

    opened = traces.start_span(
        name,
        context=parent,
        start_time=start_ns,
        links=[Link(link) for link in links if link is not None],
        attributes=_attributes(attributes),
    )
    opened.end(end_time=end_ns)
    return trace.set_span_in_context(opened), opened.get_span_context()


def _attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"fastai_serving.{key}": value for key, value in attributes.items() if value is not None and value != ""}
