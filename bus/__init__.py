"""rtem's bus: the embedded NATS server, JetStream streams, the event envelope and dead letters; and
the one retry policy and circuit breaker every layer uses (`_resilience`)."""

from ._auth import PRODUCER, RTEM_USER, TARGET, NatsAuthError, connect_options, embedded_credentials
from ._client import Bus, PublishReport
from ._connect import BusUnreachable
from ._full import full_reason, stream_full
from ._consume import ConsumeStats, Handler
from ._hold import Unavailable
from ._dlq import DeadLetter
from ._envelope import (MAX_EVENT_BYTES, SEVERITIES, SEVERITY_RANK, Event, InvalidEvent, InvalidJSON, dated_ahead,
                        event_from_dict, event_schema, format_time, loads_json, parse_event, parse_time)
from ._resilience import CLOSED, HALF_OPEN, OPEN, BreakerOpen, CircuitBreaker, RetryPolicy, retry_async
from ._processes import NatsServerError, terminate
from ._server import DataDirInUse, EmbeddedNats, nats_server_binary
from ._streams import AUDIT, DLQ, EVENTS, EVENTS_MAX_BYTES, EVENTS_MAX_MSGS, TRIAGE, BusSettings, NatsAuth

__all__ = [
    "AUDIT", "CLOSED", "DLQ", "EVENTS", "HALF_OPEN", "MAX_EVENT_BYTES", "OPEN", "PRODUCER", "RTEM_USER",
    "SEVERITIES", "SEVERITY_RANK", "TARGET", "TRIAGE", "BreakerOpen", "Bus", "BusSettings", "CircuitBreaker",
    "ConsumeStats", "DataDirInUse", "DeadLetter", "EmbeddedNats", "Event", "Handler", "InvalidEvent", "InvalidJSON",
    "NatsAuth", "NatsAuthError", "NatsServerError", "PublishReport", "RetryPolicy", "connect_options",
    "dated_ahead", "embedded_credentials", "event_from_dict", "event_schema", "format_time", "loads_json",
    "nats_server_binary", "parse_event", "parse_time", "retry_async", "terminate",
    "EVENTS_MAX_BYTES", "EVENTS_MAX_MSGS", "full_reason", "stream_full", "Unavailable", "BusUnreachable",
]
