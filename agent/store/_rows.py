"""How events and incidents look as rows: the same for every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from bus import Event, format_time, parse_time

EVENT_COLUMNS = ("id", "ts", "time", "type", "subject", "severity", "source", "message", "attributes",
                 "incident_id", "signals", "received_at")

# Incident columns that hold JSON, and what an empty one reads as.
_JSON_COLUMNS = {"entities": list, "detections": list, "root_causes": list, "actions": list, "versions": dict}


def event_row(event: Event, incident_id: str | None, signals: Sequence[str], received_at: str) -> tuple:
    """One event as a row of `EVENT_COLUMNS`."""
    return (event.id, event.ts, format_time(event.time), event.type, event.subject, event.severity,
            event.source, event.message, json.dumps(event.attributes), incident_id,
            json.dumps(list(signals)) if signals else None, received_at)


def event_from_row(row: dict[str, Any]) -> Event:
    return Event(id=row["id"], source=row["source"], type=row["type"],
                 time=parse_time(row["time"]), subject=row["subject"],
                 severity=row["severity"], message=row["message"] or "",
                 attributes=json.loads(row["attributes"] or "{}"))


def decode_incident(row: dict[str, Any]) -> dict[str, Any]:
    """An incident row with its JSON columns parsed (in place)."""
    for key, empty in _JSON_COLUMNS.items():
        if key in row:
            row[key] = json.loads(row[key]) if row[key] else empty()
    return row


def iso(ts: float) -> str:
    return format_time(datetime.fromtimestamp(ts, timezone.utc))
