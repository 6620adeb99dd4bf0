"""Events turned into signals: one anomaly about one topology entity, with its domain and weight.

A signal is the unit the scorer reasons over. Events that say nothing bad (a success rate going up, an
info log of routine work) produce no signal; events about entities outside the topology produce none
either, since a root cause must be something the operator can act on by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bus import Event
from rules import read_line, says_failure
from rules.topology import Topology

from ._catalog import (CHANGE_FAULTS, is_bad_direction, log_template, metric_domain, metric_kind, text_domain,
                       without_names)

# How much an event's own severity adds to its weight: an error-level anomaly counts half again as
# much as a warning, a critical one twice. Info-level events carry no anomaly (a log line whose words say
# something failed is the exception, at a warning's weight).
SEVERITY_WEIGHT = {"info": 0.0, "warning": 1.0, "error": 1.5, "critical": 2.0}

METRIC, TRACE, LOG, ALERT, HEALTH, CHANGE, OTHER = "metric", "trace", "log", "alert", "health", "change", "other"


@dataclass(frozen=True)
class Signal:
    """One anomaly about `entity`.

    `kind` names what was measured (a metric name without device, "trace:latency", "log:<template>"...);
    `source` is the family of events it came from, since families differ in sampling delay (metrics
    land on scrape boundaries, traces and logs as they happen) and so each is timed against its own first.
    For trace signals `caller` is the entity that observed the callee's trouble; for metric signals
    `direction` is which way the metric moved ("up", "down"), when the event says.
    """

    event_id: str
    entity: str
    kind: str
    domain: str
    source: str
    ts: float
    weight: float
    caller: str | None = None
    direction: str | None = None


def extract_signals(events: Iterable[Event], topology: Topology) -> list[Signal]:
    signals: list[Signal] = []
    for event in events:
        signal = _signal(event, topology)
        if signal is not None:
            signals.append(signal)
    return signals


def _signal(event: Event, topology: Topology) -> Signal | None:
    weight = SEVERITY_WEIGHT.get(event.severity, 1.0)
    if event.type == "rtem.log" and weight == 0.0 and says_failure(event.message):
        # Many programs log a failure at info level ("login failed for user *"): its words say what the
        # level does not, so it counts as the least anomaly there is, a warning's weight.
        weight = SEVERITY_WEIGHT["warning"]
    if event.type in CHANGE_FAULTS:
        # Changes are announced at info level; what makes one suspect is what follows it.
        if event.subject not in topology:
            return None
        return Signal(event.id, event.subject, event.type, CHANGE_FAULTS[event.type], CHANGE, event.ts, 1.0)
    if weight == 0.0:
        return None
    if event.type == "rtem.trace.anomaly":
        return _trace_signal(event, topology, weight)
    if event.subject not in topology:
        return None
    if event.type == "rtem.metric.anomaly":
        return _metric_signal(event, weight)
    if event.type == "rtem.health":
        # A failed health check says the thing is down, whatever its message says.
        return Signal(event.id, event.subject, "health", "process", HEALTH, event.ts, weight)
    source = {"rtem.log": LOG, "rtem.alert": ALERT}.get(event.type, OTHER)
    said = " ".join(statement(str(v), event.subject, topology)
                    for v in (event.attributes.get("alertname"), event.message) if v)
    # The kind is the message's template, not its domain: how rare a kind is decides its weight, and
    # "disk full" on one entity is rare where "request failed" on every entity is not.
    return Signal(event.id, event.subject, f"{source}:{log_template(said)}", text_domain(said), source, event.ts,
                  weight)


def statement(text: str, writer: str, topology: Topology) -> str:
    """What a log line or alert says, without who says it: a JSON or logfmt line's message and error fields
    (`rules.read_line`), and its writer's name and its service's count as variable, so the same statement
    from two entities is one kind on two (less rare), not two rare kinds, and a service named "mem-cache"
    does not make its every line about memory."""
    return without_names(read_line(text).statement, (writer, topology.service_of(writer)))


def _metric_signal(event: Event, weight: float) -> Signal | None:
    name = str(event.attributes.get("metric") or event.message.split(" ", 1)[0] or "metric")
    domain = metric_domain(name)
    if not is_bad_direction(name, domain, event.attributes.get("direction")):
        return None
    direction = event.attributes.get("direction")
    return Signal(event.id, event.subject, metric_kind(name), domain, METRIC, event.ts, weight,
                  direction=str(direction).lower() if direction else None)


def _trace_signal(event: Event, topology: Topology, weight: float) -> Signal | None:
    attrs = event.attributes
    callee = str(attrs.get("callee") or event.subject)
    if callee not in topology:
        return None
    caller = attrs.get("caller")
    caller = str(caller) if caller in topology else None
    domain = _trace_domain(str(attrs.get("anomaly", "")))
    return Signal(event.id, callee, f"trace:{domain}", domain, TRACE, event.ts, weight, caller)


def _trace_domain(code: str) -> str:
    """Trace anomaly codes: "PD" (performance degradation) is latency; HTTP/gRPC status codes are errors."""
    code = code.strip().upper()
    if code.isdigit() or "ERR" in code or code in ("EE", "FAIL", "ERROR"):
        return "errors"
    return "latency"


def first_by_kind(signals: Sequence[Signal]) -> dict[tuple[str, str, str | None], Signal]:
    """The earliest signal of each (entity, kind, direction): a repeated anomaly is one piece of evidence,
    while a metric that rose and later fell (or the reverse) moved in two ways, each its own evidence."""
    first: dict[tuple[str, str, str | None], Signal] = {}
    for signal in signals:
        key = (signal.entity, signal.kind, signal.direction)
        seen = first.get(key)
        if seen is None or (signal.ts, -signal.weight, signal.event_id) < (seen.ts, -seen.weight, seen.event_id):
            first[key] = signal
    return first
