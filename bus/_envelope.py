"""The event envelope: CloudEvents 1.0 structured JSON, validated against a versioned schema.

`parse_event` is the one door events come in through. It either returns an `Event` or raises
`InvalidEvent` with a reason a person can act on; the caller decides where the bad bytes go (the DLQ).
Common events take a shortcut (bus/_fast.py: orjson and a check of the v1 shape) that returns the same
Event the full path (`json.loads` and the schema) would; everything else, every refusal included, takes
the full path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field

from . import _fast

SCHEMA_VERSION = "v1"
MAX_EVENT_BYTES = 1024 * 1024
SEVERITIES = ("info", "warning", "error", "critical")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
MAX_JSON_DEPTH = 64  # objects and arrays within each other; real events nest a handful deep
MAX_INT_DIGITS = 4300  # Python's own limit for int(); named here so the refusal can say so


class InvalidEvent(ValueError):
    """Bytes that are not an rtem event; `reason` says why, `event_id` is set when one could be read."""

    def __init__(self, reason: str, event_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


class InvalidJSON(ValueError):
    """Text that `loads_json` will not read: not JSON, or JSON that rtem could not republish as standard
    JSON or store (NaN and infinities, lone surrogates, numbers past the limits, nesting too deep)."""


class Event(BaseModel):
    """One validated event. `time` is event time (UTC); windows and correlation use it."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    type: str
    time: datetime
    subject: str
    severity: str = "info"
    message: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)

    @cached_property
    def ts(self) -> float:
        """Event time as POSIX seconds, the unit windows are measured in."""
        return self.time.timestamp()


def parse_event(raw: bytes | str, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode, upcast and validate one structured CloudEvent."""
    size = _size(raw)
    if size > max_bytes:
        raise InvalidEvent(f"event is {size} bytes, over the {max_bytes}-byte limit")
    # The hot path: orjson and a few checks for the common shape, about a third of the full path's cost.
    # It returns only what the full path would; anything else (a fault, an old shape) goes the full way,
    # which words every refusal as it always has.
    doc = _fast.decode(raw, MAX_JSON_DEPTH)
    if doc is not None and _common_v1()(doc):
        event = _event_from_checked(doc)
        if event is not None:
            return event
    return _parse_event_full(raw)


def _parse_event_full(raw: bytes | str) -> Event:
    """`parse_event` after the size check, through `json.loads` and the schema: the reference the hot path
    is held to (tests/test_envelope_fast.py), and the one that says why an event is refused."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        doc = loads_json(raw)
    except InvalidJSON as exc:
        raise InvalidEvent(str(exc)) from None
    if not isinstance(doc, dict):
        raise InvalidEvent(f"not a JSON object but a {type(doc).__name__}")
    return _event_from_dict_full(doc)


def loads_json(text: bytes | str) -> Any:
    """`json.loads`, refusing what the standard allows Python to read but what would not survive being
    republished or stored: `NaN`, `Infinity` (also `1e999`), lone UTF-16 surrogates (`"\\ud800"`),
    integers over MAX_INT_DIGITS digits, and nesting deeper than MAX_JSON_DEPTH. Raises InvalidJSON."""
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"not valid UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise InvalidJSON(f"not JSON rtem reads: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except _Refused as exc:
        raise InvalidJSON(f"not JSON rtem reads: {exc}") from None
    if _may_be_unstorable(text):  # the walk costs a pass over every value: only when it can find something
        problem = _unstorable(doc)
        if problem:
            raise InvalidJSON(f"not JSON rtem reads: {problem}")
    return doc


def _may_be_unstorable(text: bytes | str) -> bool:
    """Whether `text` can hold a lone surrogate (through a `\\u` escape, or raw: json.loads decodes bytes
    with surrogatepass) or more than MAX_JSON_DEPTH opening brackets; a few C-speed scans instead of a
    walk over the document."""
    escape = "\\u" if isinstance(text, str) else b"\\u"
    opening = text.count("{" if isinstance(text, str) else b"{") + text.count("[" if isinstance(text, str) else b"[")
    return escape in text or not text.isascii() or opening > MAX_JSON_DEPTH


def event_from_dict(doc: dict[str, Any]) -> Event:
    """The Event in a decoded envelope (what the HTTP ingest reads), or InvalidEvent saying why not."""
    if _common_v1()(doc):
        event = _event_from_checked(doc)
        if event is not None:
            return event
    return _event_from_dict_full(doc)


def _event_from_dict_full(doc: dict[str, Any]) -> Event:
    event_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    doc = upcast(doc)
    try:
        _fast_validator()(doc)
    except fastjsonschema.JsonSchemaException as fast:
        # The compiled check says no; jsonschema says why, with the path of the error.
        errors = list(_validator().iter_errors(doc))
        if not errors:
            raise InvalidEvent(f"schema {SCHEMA_VERSION}: {fast.message}", event_id) from None
        error = min(errors, key=lambda e: (len(e.absolute_path), e.message))
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise InvalidEvent(f"schema {SCHEMA_VERSION}: {error.message} at {where}", event_id) from None
    try:
        time = parse_time(doc["time"])
    except ValueError:
        raise InvalidEvent(f"time {doc['time']!r} is not an RFC 3339 timestamp", event_id) from None
    except OverflowError:  # the calendar's edge with an offset: 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidEvent(f"time {doc['time']!r} is out of range in UTC", event_id) from None
    data = doc["data"]
    return _new_event(doc["id"], doc["source"], doc["type"], time, doc["subject"], data["severity"],
                      data.get("message", ""), data.get("attributes") or {})


def _event_from_checked(doc: dict[str, Any]) -> Event | None:
    """The Event in a document `_common_v1` passed, or None when its time does not parse (the full path
    then says why)."""
    try:
        time = parse_time(doc["time"])
    except (ValueError, OverflowError):
        return None
    data = doc["data"]
    return _new_event(doc["id"], doc["source"], doc["type"], time, doc["subject"], data["severity"],
                      data.get("message", ""), data.get("attributes") or {})


# What `Event.model_construct` does for these eight fields (the same type, `__dict__` in the same order,
# all fields set, no extra, no private), without its per-field loop over aliases and defaults: ~1 µs
# instead of ~6. The schema or `_common_v1` has checked every field, so pydantic's validation is not
# repeated. It writes pydantic's own slots; tests/test_envelope_fast.py compares it with model_construct,
# so a pydantic release that changes them fails there.
_EVENT_FIELDS = frozenset(Event.model_fields)
_new_instance = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__pydantic_fields_set__.__set__  # type: ignore[attr-defined]
_set_extra = BaseModel.__pydantic_extra__.__set__  # type: ignore[attr-defined]
_set_private = BaseModel.__pydantic_private__.__set__  # type: ignore[attr-defined]


def _new_event(event_id: str, source: str, event_type: str, time: datetime, subject: str, severity: str,
               message: str, attributes: dict[str, Any]) -> Event:
    event = _new_instance(Event)
    _set_dict(event, {"id": event_id, "source": source, "type": event_type, "time": time, "subject": subject,
                      "severity": severity, "message": message, "attributes": attributes})
    _set_fields_set(event, set(_EVENT_FIELDS))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def _size(raw: bytes | str) -> int:
    if isinstance(raw, bytes):
        return len(raw)
    try:
        return len(raw.encode("utf-8", "surrogateescape"))  # text read with surrogateescape: its bytes
    except UnicodeEncodeError:
        return len(raw.encode("utf-8", "surrogatepass"))  # other lone surrogates: refused once parsed


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number (send a finite number, or null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} is out of range for a JSON number (it reads as {value})")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {digits} digits is over the {MAX_INT_DIGITS}-digit limit")
    return int(text)


def _unstorable(doc: Any) -> str | None:
    """Why a parsed document cannot be kept (a lone surrogate, or nesting too deep), with its path; or None."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if _has_surrogate(value):
                return f"a lone UTF-16 surrogate in the string at {path or '/'} (not valid Unicode)"
        elif isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels at {path or '/'}"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _has_surrogate(key):
                    return f"a lone UTF-16 surrogate in a key of the object at {path or '/'} (not valid Unicode)"
                stack.append((item, f"{path}/{key}", depth + 1))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_V0_LEVELS = {"debug": "info", "info": "info", "warn": "warning", "warning": "warning",
              "err": "error", "error": "error", "crit": "critical", "critical": "critical", "fatal": "critical"}


def upcast(doc: dict[str, Any]) -> dict[str, Any]:
    """Bring older data shapes up to v1 so the rest of rtem sees one shape.

    v0 (before `dataschema` was set) carried `data.level` with syslog-like names instead of
    `data.severity`; it is renamed and mapped here. Unknown levels are left for the schema to reject.
    """
    data = doc.get("data")
    if isinstance(data, dict) and "severity" not in data and "level" in data:
        level = data["level"]
        data = {**data, "severity": _V0_LEVELS.get(str(level).lower(), level)}
        del data["level"]
        doc = {**doc, "data": data}
    return doc


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("no time zone")
    return value.astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=1)
def event_schema() -> dict[str, Any]:
    return json.loads(resources.files("bus").joinpath("schemas/event.v1.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def _fast_validator():
    """The same schema compiled to Python: the hot path's check, 20x faster than interpreting it."""
    return fastjsonschema.compile(event_schema())


@lru_cache(maxsize=1)
def _common_v1() -> Callable[[dict[str, Any]], bool]:
    """The hot path's check for the current v1 shape, with the schema's bounds (bus/_fast.py)."""
    return _fast.common_v1_check(event_schema())


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(event_schema())


def dated_ahead(event: Event, received: datetime, max_skew_s: float) -> str | None:
    """Why an event dated too far after the moment it was received is refused, or None when it is not.

    Event time is what windows, correlation and verification measure; one producer with a clock in the
    future (or a typo, 9999-12-31) would move it there for everyone, so such an event is dead-lettered."""
    ahead = (event.time - received).total_seconds()
    if ahead <= max_skew_s:
        return None
    return (f"dated {format_time(event.time)}, {ahead:.0f} s ahead of the receive time {format_time(received)}; "
            f"RTEM_MAX_CLOCK_SKEW_S={max_skew_s:g}: fix the producer's clock, or raise the limit if its events "
            "are meant to run ahead")
