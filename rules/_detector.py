"""The detector: turns events into signals with the compiled detection rules (`rules._detection` loads
them). Every condition is in ONE durable-rules ruleset, so an event is matched once against all rules; the
windows, sequence starts and absences are kept here, in event time, so a replayed recording gives the same
signals every time, and `state()` carries them across a restart."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from bus import SEVERITY_RANK, Event

from ._detection import Detection, DetectionSet, Signal
from ._engine import CompiledRuleset, lookup
from ._words import says_failure
from .topology import Topology

# The keys of `Detector.fact`: those read from the event as they are, and those of its place in the topology.
_EVENT_FIELDS = ("id", "type", "source", "subject", "severity", "message", "attributes")
_PLACE_FIELDS = ("service", "entity_type", "host")


class Detector:
    """Turns events into signals. Keeps window state per rule and key; `state()` survives restarts."""

    def __init__(self, detections: DetectionSet, topology: Topology):
        self.detections = detections
        self.topology = topology
        self.by_id = {d.id: d for d in detections.detections}
        conditions: dict[str, dict[str, Any]] = {}
        for d in detections.detections:
            if d.kind == "sequence":
                conditions[f"{d.id}#first"] = d.first or {}
                conditions[f"{d.id}#then"] = d.then or {}
            else:
                conditions[d.id] = d.match or {}
        self._ruleset = CompiledRuleset(conditions, name=f"detect_{detections.digest}")
        self._reads = tuple(self._reader(path) for path in self._ruleset.fields)
        self._windows: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._firsts: dict[tuple[str, str], tuple[float, str]] = {}
        self._last_seen: dict[tuple[str, str], tuple[float, str]] = {}
        self._absent_fired: set[tuple[str, str]] = set()
        self._places: dict[str, tuple[str, str, str]] = {}
        self.watermark = 0.0

    def close(self) -> None:
        """Free the compiled conditions; the window state (`state()`) stays readable."""
        self._ruleset.close()

    def observe(self, event: Event) -> list[Signal]:
        """Signals this event raises (possibly none), plus absences its time reveals."""
        ts = event.ts
        signals: list[Signal] = []
        for hit in self._ruleset.match_values(tuple([read(event) for read in self._reads])):
            rule_id, _, part = hit.partition("#")
            detection = self.by_id[rule_id]
            key = (rule_id, self._key(detection, event.subject))
            severity = detection.severity or event.severity
            if detection.kind == "match":
                signals.append(Signal(rule_id, event.subject, ts, severity, (event.id,)))
            elif detection.kind == "threshold":
                window = self._windows.setdefault(key, deque())
                window.append((ts, event.id))
                while window and window[0][0] < ts - detection.window_s:
                    window.popleft()
                if len(window) >= detection.count:
                    signals.append(Signal(rule_id, event.subject, ts, severity, tuple(i for _, i in window)))
            elif detection.kind == "sequence":
                if part == "then" and key in self._firsts and 0 <= ts - self._firsts[key][0] <= detection.window_s:
                    signals.append(Signal(rule_id, event.subject, ts, severity, (self._firsts[key][1], event.id)))
                if part == "first":
                    self._firsts[key] = (ts, event.id)
            elif detection.kind == "absence":
                self._last_seen[key] = (ts, event.id)
                self._absent_fired.discard(key)
        if ts > self.watermark:
            self.watermark = ts
            signals.extend(self._absences())
        return signals

    def _absences(self) -> list[Signal]:
        fired = []
        for key, (seen_ts, event_id) in self._last_seen.items():
            detection = self.by_id[key[0]]
            if key not in self._absent_fired and self.watermark - seen_ts > detection.window_s:
                self._absent_fired.add(key)
                fired.append(Signal(key[0], key[1], seen_ts + detection.window_s,
                                    detection.severity or "error", (event_id,)))
        return fired

    def fact(self, event: Event) -> dict[str, Any]:
        """What detection conditions can test: the event's fields plus its place in the topology."""
        service, entity_type, host = self._place(event.subject)
        return {
            "id": event.id, "type": event.type, "source": event.source, "subject": event.subject,
            "severity": event.severity, "severity_rank": SEVERITY_RANK[event.severity],
            "message": event.message, "says_failure": says_failure(event.message), "attributes": event.attributes,
            "service": service, "entity_type": entity_type, "host": host,
        }

    def _reader(self, path: str) -> Callable[[Event], Any]:
        """How to read one field a condition names straight from an event: what `lookup(self.fact(event),
        path)` gives, without building the fact (a dozen keys per event) only to look a few of them up.
        The fact's keys hold no dots and only `attributes` holds a mapping, so a dotted path either starts
        with `attributes.` or names nothing."""
        if path in _EVENT_FIELDS:
            return attrgetter(path)
        if path == "severity_rank":
            return lambda event: SEVERITY_RANK[event.severity]
        if path == "says_failure":
            return lambda event: says_failure(event.message)
        if path in _PLACE_FIELDS:
            index = _PLACE_FIELDS.index(path)
            return lambda event: self._place(event.subject)[index]
        head, _, rest = path.partition(".")
        if head == "attributes" and rest:
            if "." not in rest:
                return lambda event: event.attributes.get(rest)
            return lambda event: lookup(event.attributes, rest)
        return lambda event: None

    def _place(self, subject: str) -> tuple[str, str, str]:
        place = self._places.get(subject)
        if place is None:
            topo = self.topology
            place = (topo.service_of(subject), topo.entity_type(subject) or "unknown", topo.host_of(subject) or "")
            if len(self._places) < 100_000:
                self._places[subject] = place
        return place

    def _key(self, detection: Detection, subject: str) -> str:
        if detection.by == "service":
            return self.topology.service_of(subject)
        if detection.by == "host":
            return self.topology.host_of(subject) or subject
        return subject

    def state(self) -> dict[str, Any]:
        """Window state as JSON-able data, to persist across restarts. Expired entries are dropped."""
        self._prune()
        return {
            "watermark": self.watermark,
            "windows": [[k[0], k[1], list(v)] for k, v in self._windows.items()],
            "firsts": [[k[0], k[1], v[0], v[1]] for k, v in self._firsts.items()],
            "last_seen": [[k[0], k[1], v[0], v[1]] for k, v in self._last_seen.items()],
            "absent_fired": [list(k) for k in self._absent_fired],
        }

    def _prune(self) -> None:
        """Forget windows and sequence starts that event time has left behind."""
        mark = self.watermark
        for key in [k for k, w in self._windows.items() if not w or w[-1][0] < mark - self.by_id[k[0]].window_s]:
            del self._windows[key]
        for key in [k for k, (ts, _) in self._firsts.items() if ts < mark - self.by_id[k[0]].window_s]:
            del self._firsts[key]

    def restore(self, state: dict[str, Any]) -> None:
        known = self.by_id.keys()
        self.watermark = state.get("watermark", 0.0)
        self._windows = {(r, k): deque(tuple(x) for x in v) for r, k, v in state.get("windows", []) if r in known}
        self._firsts = {(r, k): (t, i) for r, k, t, i in state.get("firsts", []) if r in known}
        self._last_seen = {(r, k): (t, i) for r, k, t, i in state.get("last_seen", []) if r in known}
        self._absent_fired = {(r, k) for r, k in state.get("absent_fired", []) if r in known}
