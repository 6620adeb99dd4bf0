"""What a structured log line says. Cloud-native programs mostly log one JSON object a line (zap, logrus,
pino, bunyan, structlog, ECS, GELF, a container runtime's `{"log": …}` wrapper) or logfmt (`level=error
msg="login failed" user=bob`, Go services, Prometheus, Loki). Read as prose, such a line's statement is a
quoted value among field names, and every line of a system reads alike: its keys. So detection and the
reasoner read the statement out of it first: the message field, with the error field's text after it.
A multi-line entry (an exception joined by a log shipper) says its unindented lines, not its stack frames.
Any other line is its own statement."""

from __future__ import annotations

import json
import re
from typing import NamedTuple

# Message fields, by the libraries that write them: msg (zap, logrus, pino, bunyan, go-kit, slog),
# message (ECS, Google Cloud, logstash, winston, journald's MESSAGE), short_message (GELF), event
# (structlog), log (the container runtime's wrapper, whose value is itself a line of any format).
_MESSAGE_KEYS = ("msg", "message", "short_message", "event", "log")
# The error a line reports beside its message: "request failed" says less than "request failed: dial tcp
# … connection refused". ECS nests it ({"error": {"message": …}}) or writes it dotted.
_ERROR_KEYS = ("error", "err", "exception", "error.message")
# Not journald's PRIORITY: "priority" is as often a job's or a ticket's, and "priority": 1 would say alert.
_LEVEL_KEYS = ("level", "lvl", "severity", "log.level", "levelname")
# Levels written as numbers: syslog's 0-7 (GELF's level) and pino's and bunyan's tens; the two never
# overlap.
_NUMBERED_LEVELS = {"0": "emerg", "1": "alert", "2": "crit", "3": "error", "4": "warning", "5": "notice",
                    "6": "info", "7": "debug",
                    "10": "trace", "20": "debug", "30": "info", "40": "warn", "50": "error", "60": "fatal"}
_PAIR = re.compile(r'(?:^|\s)([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
# A cheap test before parsing pairs: does the line hold a message field at all?
_MESSAGE_PAIR = re.compile(r"(?:^|\s)(?:" + "|".join(_MESSAGE_KEYS) + ")=", re.IGNORECASE)


class LogLine(NamedTuple):
    """A line's statement (what it says) and the level it names itself, if it is structured and does.
    A tuple: detection reads every event's line, and most are plain, so making one must cost next to
    nothing."""

    statement: str
    level: str | None = None


def read_line(text: str) -> LogLine:
    """The statement and own level of a JSON or logfmt line; a multi-line entry without its stack frames;
    any other line is its own statement."""
    stripped = text.strip()
    fields: dict | None = None
    if stripped.startswith("{") and stripped.endswith("}"):
        fields = _json_object(stripped)
    elif "=" in text and _MESSAGE_PAIR.search(text):
        fields = {key: _unquote(value) for key, value in _PAIR.findall(text)}
        fields = fields if len(fields) >= 2 else None
    message = _keyed(fields, _MESSAGE_KEYS) if fields else None
    if message is None:
        return LogLine(_without_frames(text) if "\n" in text else text)
    inner = read_line(message)  # a runtime's {"log": …} wraps a line of any format
    error = _keyed(fields, _ERROR_KEYS, nested=True)
    statement = ": ".join(part for part in (inner.statement.strip(), error) if part)
    level = inner.level or _keyed(fields, _LEVEL_KEYS)
    return LogLine(statement, _NUMBERED_LEVELS.get(level, level.lower()) if level else None)


# A multi-line entry (a log shipper joins an exception's lines into one) says what it says on its unindented
# lines: the message, the exception ("KeyError: 'user'", "Caused by: java.io.IOException: disk full",
# "panic: runtime error: …"). Its stack frames and code lines are indented, and a traceback's headers are the
# same in every one: kept, they would make Python's every traceback one statement, whatever it raised.
_FRAME_HEADERS = ("traceback (most recent call last)", "during handling of the above exception",
                  "the above exception was the direct cause")


def _without_frames(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line[:1].isspace() and not line.lower().startswith(_FRAME_HEADERS)]
    return " ".join(lines) or text


def _keyed(fields: dict, keys: tuple[str, ...], nested: bool = False) -> str | None:
    """The text of the first of `keys` present (any case) with text in it; with `nested`, a mapping's own
    message counts as its text (ECS's {"error": {"message": …}})."""
    lowered = {str(k).lower(): v for k, v in fields.items()}
    for key in keys:
        value = lowered.get(key)
        if nested and isinstance(value, dict):
            value = _keyed(value, ("message", "msg", "type"))
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: read as prose
        return None
    return value if isinstance(value, dict) else None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    return value
