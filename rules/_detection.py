"""Detection: which events are signs of a disruption.

Detection files (`rules/detect/*.yaml`, schema `schemas/detections.v1.json`) hold four kinds of rule:
a plain `match`, a `threshold` (N matching events per key within a window), a `sequence` (a `first`
event followed by a `then` event on the same key within a time) and an `absence` (a key that sent
matching events went quiet for a time). Every condition is compiled into ONE durable-rules ruleset
through the adapter, so an event is matched once against all rules; windows, sequences and absences
are kept by the `Detector` (`rules._detector`), in event time, so a replayed recording gives the same
signals every time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from ._engine import OPERATORS, CompiledRuleset, ConditionError
from ._files import RuleFile, RulesError, content_digest, read_rule_file
from ._schema_errors import did_you_mean, explain_all


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


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(resources.files("rules").joinpath("schemas/detections.v1.json").read_text("utf-8"))
    return Draft202012Validator(schema)
