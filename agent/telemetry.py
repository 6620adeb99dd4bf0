"""OpenTelemetry tracing: one trace from an event to the action it led to.

The W3C `traceparent` travels in NATS headers: `rtem ingest` and the simulator's producers may set
it on events, triage continues it in a span per batch, and executors put the incident's trace
context on every command they send. Spans are exported to the console with
`RTEM_OTEL_EXPORTER=console`, or to an OTLP collector by installing the OTLP exporter package and
using the standard `OTEL_*` variables; without either, spans are created and dropped cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

_configured = False


def setup() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": "rtem"}))
    if os.environ.get("RTEM_OTEL_EXPORTER") == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    return trace.get_tracer("rtem")


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (`traceparent`, `tracestate`)."""
    headers = dict(headers or {})
    propagate.inject(headers)
    return headers


@contextmanager
def span_from(headers: Mapping[str, str] | None, name: str, **attributes):
    """A span that continues the trace carried in `headers`, if any."""
    parent = propagate.extract(dict(headers or {}))
    token = context.attach(parent)
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        context.detach(token)
