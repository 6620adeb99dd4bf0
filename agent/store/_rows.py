"""How events and incidents look as rows: the same for every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from bus import Event, format_time, parse_time

EVENT_COLUMNS = ("id", "ts", "time", "type", "subject", "severity", "source", "message", "attributes",
                 "incident_id", "signals", "received_at")

# Incident columns that hold JSON, and what an empty one reads as.
_JSON_COLUMNS = {"entities": list, "detections": list, "root_causes": list, "actions": list, "versions": dict}


def event_row(event: Event, incident_id: str | None, signals: Sequence[str], received_at: str) -> tuple:
    """One event as a row of `EVENT_COLUMNS`. The text is what `json.dumps` and `format_time` give, byte for
    byte (stored rows are read and compared by other code), only reached without their per-call costs."""
    attributes = event.attributes
    return (event.id, event.ts, _time_text(event.time), event.type, event.subject, event.severity,
            event.source, event.message, _dumps(attributes) if attributes else "{}", incident_id,
            _dumps(list(signals)) if signals else None, received_at)


def _json_encoder():
    """`json.dumps(value)` with its default arguments, as the C encoder it builds on every call, built once:
    two thirds of its cost per event was the building. No check for circular references (`markers`
    None): attributes come from parsed JSON, which cannot hold one, and a shared marker dict would keep
    stale ids after an encoding error."""
    if c_make_encoder is None:  # a Python without the C accelerator: nothing to save
        return json.dumps
    default = json.JSONEncoder().default  # raises the same TypeError json.dumps does
    try:  # the arguments JSONEncoder.iterencode passes for json.dumps' defaults
        encode = c_make_encoder(None, default, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    except TypeError:  # another Python's signature: keep json.dumps rather than guess
        return json.dumps

    def dumps(value: Any) -> str:
        return "".join(encode(value, 0))

    probe = {"a": [1, 2.5, -0.0, 1e300, None, True, "é\u2028\"x"], "b": {}, "": "\ud800"}
    return dumps if dumps(probe) == json.dumps(probe) else json.dumps


_dumps = _json_encoder()


def _time_text(value: datetime) -> str:
    """`format_time(value)`; an event's time is already in UTC (`parse_time`), so skip converting it."""
    if value.tzinfo is timezone.utc:
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    return format_time(value)


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
