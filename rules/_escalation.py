"""Escalation policy files: who is paged for which incidents, how often, and when not.

One YAML file (`escalation.yaml` beside the rules, schema `schemas/escalation.v1.json`) holds
routes, tried in order: the first whose `match` fits an incident's severity and services pages its
levels. While nobody acknowledges, a level is paged again every `repeat_every`, and after
`escalate_after` the next level is paged. During `quiet_hours` (in an IANA time zone) only incidents
at or above `min_severity` page; the others wait until the quiet hours end.

This module only reads and checks the file (errors at file:line:column, like every rule file); the
decisions over time are pure functions in `agent/incident/_oncall.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jsonschema import Draft202012Validator

from bus import SEVERITY_RANK

from ._detection import parse_duration
from ._files import RuleFile, RulesError, content_digest, read_rule_file

POLICY_FILE = "escalation.yaml"  # its name in a rules directory


@dataclass(frozen=True)
class QuietHours:
    """A daily window in a time zone; `end` before `start` means it runs past midnight."""

    timezone: str
    start: time
    end: time
    min_severity: str = "critical"  # incidents at or above it page during quiet hours

    def holds(self, severity: str, now: datetime) -> bool:
        """Whether a page about an incident of `severity` waits at `now` (an aware datetime)."""
        if SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.min_severity]:
            return False
        local = now.astimezone(ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True)
class EscalationLevel:
    receivers: tuple[str, ...]


@dataclass(frozen=True)
class EscalationRoute:
    id: str
    levels: tuple[EscalationLevel, ...]
    severities: frozenset[str] = frozenset()  # empty: any
    min_severity: str | None = None
    services: frozenset[str] = frozenset()  # empty: any
    repeat_every_s: float | None = None  # None: page each level once
    escalate_after_s: float | None = None  # None: never go on to the next level
    source: str = ""
    line: int = 0

    def matches(self, severity: str, services: frozenset[str] | set[str]) -> bool:
        if self.severities and severity not in self.severities:
            return False
        if self.min_severity and SEVERITY_RANK.get(severity, 0) < SEVERITY_RANK[self.min_severity]:
            return False
        return not self.services or bool(self.services & set(services))


@dataclass(frozen=True)
class EscalationPolicy:
    routes: tuple[EscalationRoute, ...]
    quiet_hours: QuietHours | None = None
    digest: str = ""
    source: str = ""

    def route(self, severity: str, services: frozenset[str] | set[str]) -> EscalationRoute | None:
        """The first route that fits, or None: such an incident pages nobody through the policy."""
        return next((r for r in self.routes if r.matches(severity, services)), None)

    def describe(self) -> dict:
        return {"source": self.source, "digest": self.digest, "routes": [
            {"id": r.id, "levels": [list(level.receivers) for level in r.levels], "repeat_every_s": r.repeat_every_s,
             "escalate_after_s": r.escalate_after_s} for r in self.routes],
            "quiet_hours": None if self.quiet_hours is None else {
                "timezone": self.quiet_hours.timezone, "start": self.quiet_hours.start.strftime("%H:%M"),
                "end": self.quiet_hours.end.strftime("%H:%M"), "min_severity": self.quiet_hours.min_severity}}



def packaged_policy() -> Path:
    """The example policy shipped beside the packaged rules."""
    return Path(str(resources.files("rules").joinpath(POLICY_FILE)))


def collect_escalation(path: str | Path, problems: list[RulesError]) -> EscalationPolicy | None:
    """For `rtem rules check`: every schema problem of the policy at once (then, once the schema
    holds, the first problem of its routes), added to `problems`; the policy when there is none."""
    try:
        rule_file = read_rule_file(path)
    except RulesError as exc:
        problems.append(exc)
        return None
    found = rule_file.duplicate_problems() + rule_file.schema_problems(_validator())
    if found:
        problems.extend(found)
        return None
    try:
        return load_escalation(path)
    except RulesError as exc:
        problems.append(exc)
        return None


def load_escalation(path: str | Path) -> EscalationPolicy:
    """Read and check one policy file. Raises RulesError at the file, line and column of the first
    problem (schema, time zone, durations, duplicate route ids, a level nobody can reach)."""
    rule_file = read_rule_file(path)
    rule_file.validate(_validator())
    doc = rule_file.doc
    quiet = _quiet_hours(doc.get("quiet_hours"), rule_file)
    routes: list[EscalationRoute] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(doc["routes"]):
        line = rule_file.locate(("routes", index))[0]
        if raw["id"] in seen:
            raise rule_file.error(("routes", index, "id"), f"duplicate route id {raw['id']!r}",
                                  f"first defined at line {seen[raw['id']]}")
        seen[raw["id"]] = line
        match = raw.get("match") or {}
        levels = tuple(EscalationLevel(tuple(level["receivers"])) for level in raw["levels"])
        escalate = _duration(raw, "escalate_after", rule_file, index)
        if escalate is None and len(levels) > 1:
            raise rule_file.error(("routes", index, "levels", 1), f"route {raw['id']!r} has {len(levels)} levels "
                                  "but no escalate_after: the levels after the first are never paged",
                                  "add escalate_after (e.g. 30m), or keep one level")
        if escalate is not None and len(levels) == 1:
            raise rule_file.error(("routes", index, "escalate_after"), f"route {raw['id']!r} has escalate_after "
                                  "but one level: there is nothing to escalate to", "add a second level, or remove it")
        routes.append(EscalationRoute(
            id=raw["id"], levels=levels, severities=frozenset(match.get("severity", ())),
            min_severity=match.get("min_severity"), services=frozenset(match.get("services", ())),
            repeat_every_s=_duration(raw, "repeat_every", rule_file, index), escalate_after_s=escalate,
            source=str(rule_file.path), line=line))
    return EscalationPolicy(tuple(routes), quiet, content_digest([rule_file]), str(rule_file.path))


def _quiet_hours(raw: dict | None, rule_file: RuleFile) -> QuietHours | None:
    if raw is None:
        return None
    try:
        ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise rule_file.error(("quiet_hours", "timezone"), f"unknown time zone {raw['timezone']!r}",
                              "an IANA name such as Europe/Berlin, America/New_York or UTC") from None
    start, end = time.fromisoformat(raw["start"]), time.fromisoformat(raw["end"])
    if start == end:
        raise rule_file.error(("quiet_hours", "end"), "quiet hours start and end at the same time",
                              "give a window, e.g. start: \"22:00\", end: \"07:00\"")
    return QuietHours(raw["timezone"], start, end, raw.get("min_severity", "critical"))


def _duration(raw: dict, key: str, rule_file: RuleFile, index: int) -> float | None:
    if key not in raw:
        return None
    try:
        return parse_duration(raw[key])
    except ValueError as exc:
        raise rule_file.error(("routes", index, key), str(exc)) from None


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(resources.files("rules").joinpath("schemas/escalation.v1.json").read_text("utf-8"))
    return Draft202012Validator(schema)
