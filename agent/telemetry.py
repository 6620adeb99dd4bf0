"""OpenTelemetry tracing: one trace from an event to the action it led to.

The W3C `traceparent` travels in NATS headers: `rtem ingest` and the simulator's producers may set
it on events, triage continues it in a span per batch, and executors put the incident's trace
context on every command and HTTP step they send. Spans are exported by `Settings.otel_exporter`:
`otlp` (OTLP over HTTP/protobuf to a collector, configured by the standard `OTEL_EXPORTER_OTLP_*`
variables; chosen by default when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), `console`, or `none` (spans
are created, so trace context still propagates, and dropped cheaply). docs/integrations.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

Exporter = Literal["none", "console", "otlp"]
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

# The tracer provider is process-wide in OpenTelemetry (it can be set once), hence module state.
_provider: TracerProvider | None = None


def choose_exporter(setting: Exporter | None, environ: Mapping[str, str]) -> Exporter:
    """The setting when given; else otlp when an OTLP endpoint is configured, else none."""
    if setting is not None:
        return setting
    return "otlp" if any(environ.get(name) for name in ENDPOINT_VARIABLES) else "none"


def setup(exporter: Exporter | None, environ: Mapping[str, str] | None = None) -> None:
    """Install rtem's tracer provider once per process; `exporter` is `Settings.otel_exporter`."""
    global _provider
    if _provider is not None:
        return
    environ = os.environ if environ is None else environ
    # OTEL_SERVICE_NAME names the service when set (Resource.create reads it); rtem otherwise.
    resource = Resource.create({} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "rtem"})
    _provider = TracerProvider(resource=resource)
    chosen = choose_exporter(exporter, environ)
    if chosen == "console":
        _provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif chosen == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Batched off the hot path; OTEL_BSP_* tune it, flush() empties it on the way out.
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still batched (rtem run calls it when it stops); bounded, so a collector that is
    down delays a stop by at most `timeout_s`."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def tracer() -> trace.Tracer:
    return trace.get_tracer("rtem")


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (`traceparent`, `tracestate`)."""
    headers = dict(headers or {})
    propagate.inject(headers)
    return headers
