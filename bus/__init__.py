"""rtem's bus: the embedded NATS server, JetStream streams, the event envelope and dead letters."""

from ._client import Bus, ConsumeStats, DeadLetter, Handler, PublishReport
from ._envelope import (MAX_EVENT_BYTES, SEVERITIES, SEVERITY_RANK, Event, InvalidEvent, event_from_dict, event_schema,
                        format_time, parse_event, parse_time)
from ._server import EmbeddedNats, NatsServerError
from ._streams import AUDIT, DLQ, EVENTS, TRIAGE, BusSettings

__all__ = [
    "AUDIT", "DLQ", "EVENTS", "MAX_EVENT_BYTES", "SEVERITIES", "SEVERITY_RANK", "TRIAGE",
    "Bus", "BusSettings", "ConsumeStats", "DeadLetter", "EmbeddedNats", "Event", "Handler",
    "InvalidEvent", "NatsServerError", "PublishReport", "event_from_dict", "event_schema", "format_time", "parse_event",
    "parse_time",
]
