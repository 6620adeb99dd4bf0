"""Detection: which events are signs of a disruption.

Detection files (`rules/detect/*.yaml`, schema `schemas/detections.v1.json`) hold four kinds of rule:
a plain `match`, a `threshold` (N matching events per key within a window), a `sequence` (a `first`
event followed by a `then` event on the same key within a time) and an `absence` (a key that sent
matching events went quiet for a time). Every condition is compiled into ONE durable-rules ruleset
through the adapter, so an event is matched once against all rules; windows, sequences and absences
are kept here, in event time, so a replayed recording gives the same signals every time.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any

from bus import SEVERITY_RANK, Event

from ._engine import OPERATORS, CompiledRuleset, ConditionError, lookup
from ._files import RuleFile, RulesError, content_digest, read_rule_file
from ._schema_errors import did_you_mean, explain_all
from .topology import Topology

import json

from jsonschema import Draft202012Validator


# The keys of `Detector.fact`: those read from the event as they are, and those of its place in the topology.
_EVENT_FIELDS = ("id", "type", "source", "subject", "severity", "message", "attributes")
_PLACE_FIELDS = ("service", "entity_type", "host")


@dataclass(frozen=True)
class Detection:
    id: str
    kind: str  # match | threshold | sequence | absence
    description: str = ""
    match: dict[str, Any] | None = None
    count: int = 1
    window_s: float = 0.0
    first: dict[str, Any] | None = None
    then: dict[str, Any] | None = None
    by: str = "subject"
    severity: str | None = None
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class Signal:
    """A detection that fired: on which entity, when (event time), and on which events."""

    rule: str
    entity: str
    ts: float
    severity: str
    event_ids: tuple[str, ...]


@dataclass
class DetectionSet:
    detections: list[Detection]
    digest: str
    sources: list[str] = field(default_factory=list)


def parse_duration(value: float | int | str) -> float:
    if isinstance(value, int | float):
        return float(value)
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", value) if isinstance(value, str) else None
    if found is None:  # the schema's pattern lets "5m\n" through: its `$` matches before a final newline
        raise ValueError(f"{value!r} is not a duration: seconds, or a string like 90s, 5m, 1h")
    number, unit = found.groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def default_detect_dir() -> Path:
    return Path(str(resources.files("rules").joinpath("detect")))


def load_detections(directory: str | Path | None = None) -> DetectionSet:
    """Read, check and return every detection rule under `directory` (default: the packaged ones).

    Raises RulesError naming the file, line and column of the first problem.
    """
    problems: list[RulesError] = []
    detections = collect_detections(directory, problems)
    if problems:
        raise problems[0]
    return detections


def collect_detections(directory: str | Path | None, problems: list[RulesError]) -> DetectionSet:
    """Like load_detections, but every problem of every file goes to `problems` (file order, then
    line) and the detections without one are returned: `rtem rules check` shows them all in one run."""
    directory = Path(directory) if directory else default_detect_dir()
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    detections: list[Detection] = []
    seen: dict[str, str] = {}
    parsed: list[RuleFile] = []
    for path in files:
        try:
            rule_file = read_rule_file(path)
        except RulesError as exc:
            problems.append(exc)
            continue
        parsed.append(rule_file)
        found: list[RulesError] = rule_file.duplicate_problems()
        bad: set[int] = set()
        for where, reason, hint in explain_all(list(_validator().iter_errors(rule_file.doc))):
            found.append(rule_file.error(where, reason, hint))
            if len(where) >= 2 and where[0] == "detections" and isinstance(where[1], int):
                bad.add(where[1])
            else:
                bad.add(-1)  # the file as a whole is wrong
        listed = rule_file.doc.get("detections") if isinstance(rule_file.doc, dict) else None
        if -1 not in bad and isinstance(listed, list):
            for index, doc in enumerate(listed):
                if index in bad:
                    # the schema refused part of it; its conditions may still be worth a word
                    _conditions_of(doc, rule_file, index, found)
                    continue
                detection = _detection(doc, rule_file, index, found)
                if detection is None:
                    continue
                if detection.id in seen:
                    found.append(rule_file.error(("detections", index, "id"), f"duplicate rule id {detection.id!r}",
                                                 f"first defined at {seen[detection.id]}; ids are unique"))
                    continue
                seen[detection.id] = f"{path}:{detection.line}"
                detections.append(detection)
        problems.extend(sorted(found, key=lambda p: (p.line, p.column)))
    # Every condition was checked above as compiling would (CompiledRuleset.check), so a bad one fails
    # here with its file:line, and no throwaway ruleset is defined (durable-rules never frees one).
    return DetectionSet(detections, content_digest(parsed), [str(p) for p in files])


def _detection(doc: dict[str, Any], rule_file: RuleFile, index: int, problems: list[RulesError]) -> Detection | None:
    """One detection, or None with each of its problems (conditions, durations) added to `problems`."""
    line = rule_file.locate(("detections", index))[0]
    common = dict(id=doc["id"], description=doc.get("description", ""), by=doc.get("by", "subject"),
                  severity=doc.get("severity"), source=str(rule_file.path), line=line)
    before = len(problems)
    if "sequence" in doc:
        seq = doc["sequence"]
        _condition(seq["first"], ("sequence", "first"), rule_file, index, problems)
        _condition(seq["then"], ("sequence", "then"), rule_file, index, problems)
        window = _duration(doc, ("sequence", "within"), rule_file, index, problems)
        return None if len(problems) > before else Detection(kind="sequence", first=seq["first"], then=seq["then"],
                                                             window_s=window, **common)
    if "absence" in doc:
        _condition(doc["absence"]["match"], ("absence", "match"), rule_file, index, problems)
        window = _duration(doc, ("absence", "for"), rule_file, index, problems)
        return None if len(problems) > before else Detection(kind="absence", match=doc["absence"]["match"],
                                                             window_s=window, **common)
    _condition(doc["match"], ("match",), rule_file, index, problems)
    if "threshold" in doc:
        window = _duration(doc, ("threshold", "window"), rule_file, index, problems)
        return None if len(problems) > before else Detection(kind="threshold", match=doc["match"],
                                                             count=doc["threshold"]["count"], window_s=window, **common)
    return None if len(problems) > before else Detection(kind="match", match=doc["match"], **common)


def _conditions_of(doc: Any, rule_file: RuleFile, index: int, problems: list[RulesError]) -> None:
    """The condition problems of a detection the schema refused, for those of its conditions that are there."""
    if not isinstance(doc, dict):
        return
    places = [(doc.get("match"), ("match",))]
    for kind, keys in (("sequence", ("first", "then")), ("absence", ("match",))):
        part = doc.get(kind)
        if isinstance(part, dict):
            places += [(part.get(key), (kind, key)) for key in keys]
    taken = {(p.line, p.column) for p in problems}  # one problem per place: the schema may have refused it
    for condition, at in places:
        if isinstance(condition, dict):
            found: list[RulesError] = []
            _condition(condition, at, rule_file, index, found)
            problems.extend(p for p in found if (p.line, p.column) not in taken)


def _condition(condition: dict[str, Any], at: tuple, rule_file: RuleFile, index: int,
               problems: list[RulesError]) -> None:
    try:
        _check(condition)
    except ConditionError as exc:
        hint = ""
        if exc.reason.startswith("unknown operator"):
            guess = did_you_mean(exc.path.rsplit(".", 1)[-1], OPERATORS)
            hint = f"did you mean {guess!r}?" if guess else ""
        # the adapter names the condition "match" wherever it sits; point into the right one
        parts = [p for p in re.split(r"[.\[\]]+", exc.path) if p][1:]
        path = ("detections", index, *at, *(int(p) if p.isdigit() else p for p in parts)) if exc.path else \
            ("detections", index)
        problems.append(rule_file.error(path, exc.reason, hint))


def _duration(doc: dict[str, Any], at: tuple[str, str], rule_file: RuleFile, index: int,
              problems: list[RulesError]) -> float:
    try:
        return parse_duration(doc[at[0]][at[1]])
    except ValueError as exc:
        problems.append(rule_file.error(("detections", index, *at), str(exc), "e.g. 90s, 5m, 1h"))
        return 0.0


def _check(condition: dict[str, Any]) -> None:
    CompiledRuleset.check(condition)


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
            "message": event.message, "attributes": event.attributes,
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


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(resources.files("rules").joinpath("schemas/detections.v1.json").read_text("utf-8"))
    return Draft202012Validator(schema)
