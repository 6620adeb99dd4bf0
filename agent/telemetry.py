"""OpenTelemetry tracing: one trace from an event to the action it led to.

The W3C `traceparent` travels in NATS headers: `rtem ingest` and the simulator's producers may set
it on events, triage continues it in a span per batch, and executors put the incident's trace
context on every command they send. Spans are exported to the console with
`RTEM_OTEL_EXPORTER=console` (`Settings.otel_exporter`), or to an OTLP collector by installing the OTLP exporter package and
using the standard `OTEL_*` variables; without either, spans are created and dropped cheaply.
"""

from __future__ import annotations

from typing import Literal

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

_configured = False


def setup(exporter: Literal["none", "console"]) -> None:
    """Install rtem's tracer provider once per process; `exporter` is `Settings.otel_exporter`."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": "rtem"}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    return trace.get_tracer("rtem")


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (`traceparent`, `tracestate`)."""
    headers = dict(headers or {})
    propagate.inject(headers)
    return headers

