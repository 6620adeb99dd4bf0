"""Guardrail unit tests (`rtem rules test`), modelled on `promtool test rules`.

A test file `<name>.test.yaml` sits beside the guardrails (schema `schemas/guardrail-tests.v1.json`).
Each test sets a context (topology, incident, observed state, earlier actions), then proposes actions
one step at a time, each at an event time, and says what verdict and which matched rules it expects.
Steps the guard allows count as actions for the steps after them, so a rate limit or a cap is
tested the way it works live. Every step reports a diff on failure; the run reports which guardrails
no step made fire (coverage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from rules._contracts import ActionContract
from rules._files import RuleFile, RulesError, read_fast
from rules._fitness import Diagnosis
from rules._gates import MemoryHistory, RecordedAction, StaticState
from rules._guard import Guard
from rules._guardrail_schema import RuleProblem, problem, schema_problem
from rules._guardrails import Guardrail, _plain, guardrail_paths, is_rule_test, load_guardrails
from rules._proposal import Proposal
from rules.topology import Topology, TopologyError

DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # a Monday
BUILTIN_IDS = frozenset({"contract.unknown_action", "contract.invalid", "guard.blast_radius", "contract.approval"})
_OFFSET = re.compile(r"^(-?[0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")


@dataclass
class StepResult:
    """One step of one test: what it expected, what the guard said, and whether they agree."""

    file: str
    line: int
    test: str
    step: int
    at: datetime
    proposal: dict[str, Any]
    expected: dict[str, Any]
    got: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """Each disagreement in words: outcome, rules, approver role."""
        found = []
        if "outcome" in self.expected and self.expected["outcome"] != self.got["outcome"]:
            found.append(f"outcome: expected {self.expected['outcome']}, got {self.got['outcome']}")
        if self.missing or self.unexpected:
            parts = ([f"expected but did not match: {', '.join(self.missing)}"] if self.missing else []) + \
                    ([f"matched but not expected: {', '.join(self.unexpected)}"] if self.unexpected else [])
            found.append("rules: " + "; ".join(parts))
        if "approver_role" in self.expected and self.expected["approver_role"] != self.got["approver_role"]:
            found.append(f"approver_role: expected {self.expected['approver_role']}, got {self.got['approver_role']}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "test": self.test, "step": self.step,
                "at": self.at.isoformat().replace("+00:00", "Z"), "proposal": self.proposal,
                "expected": self.expected, "got": self.got, "passed": self.passed, "problems": self.problems(),
                "missing_rules": self.missing, "unexpected_rules": self.unexpected}


@dataclass
class RuleTestReport:
    files: list[str] = field(default_factory=list)
    results: list[StepResult] = field(default_factory=list)
    problems: list[RulesError] = field(default_factory=list)
    rules: dict[str, Guardrail] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    tests: int = 0

    @property
    def failures(self) -> list[StepResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures and bool(self.files)

    @property
    def not_exercised(self) -> list[Guardrail]:
        return [rule for rule_id, rule in self.rules.items() if not self.hits.get(rule_id)]

    @property
    def coverage(self) -> float:
        return 100.0 * (len(self.rules) - len(self.not_exercised)) / len(self.rules) if self.rules else 100.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "files": self.files, "tests": self.tests, "steps": len(self.results),
            "passed": len(self.results) - len(self.failures), "failed": len(self.failures),
            "failures": [r.to_dict() for r in self.failures],
            "errors": [_problem_dict(p) for p in self.problems],
            "coverage": {"rules": len(self.rules), "exercised": len(self.rules) - len(self.not_exercised),
                         "percent": round(self.coverage, 1),
                         "hits": {rule_id: self.hits.get(rule_id, 0) for rule_id in self.rules},
                         "not_exercised": [{"id": r.id, "file": r.source, "line": r.line} for r in self.not_exercised]},
        }


def find_test_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """`*.test.yaml` files: the file itself, or those in a directory (and its `guardrails/`)."""
    found: list[Path] = []
    for item in [source] if isinstance(source, str | Path) else source:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for where in (path, path / "guardrails"):
                if where.is_dir():
                    found.extend(f for f in where.iterdir() if is_rule_test(f))
    return sorted(set(found))


def run_tests(files: Iterable[str | Path], contracts: Mapping[str, ActionContract]) -> RuleTestReport:
    """Run every test in `files` against the guardrails each names (or those beside it)."""
    report = RuleTestReport()
    guards: dict[tuple[str, ...], Guard] = {}
    for path in files:
        path = Path(path)
        report.files.append(str(path))
        try:
            suite = load_test_file(path)
            key = tuple(str(p) for p in suite.rule_paths)
            if key not in guards:
                guards[key] = Guard(load_guardrails(suite.rule_paths), contracts)
            guard = guards[key]
        except RulesError as exc:
            report.problems.append(exc)
            continue
        for rule in guard.guardrails.rules:
            report.rules.setdefault(rule.id, rule)
        known = set(guard._rules) | set(guard.fitness) | BUILTIN_IDS
        for test in suite.tests:
            unknown = [(where, rule_id) for where, rule_id in test.expected_ids() if rule_id not in known]
            if unknown:
                where, rule_id = unknown[0]
                report.problems.append(problem(suite.file, where, "unknown_rule",
                                               f"expects rule {rule_id!r}, which no rule file under test defines",
                                               f"rule files: {', '.join(p.name for p in suite.rule_paths)}"))
                continue
            report.tests += 1
            report.results.extend(_run(test, guard, suite, report.hits))
    return report


@dataclass
class _Test:
    name: str
    line: int
    doc: dict[str, Any]
    at: list
    topology: Topology
    start: datetime

    def expected_ids(self):
        for index, step in enumerate(self.doc["steps"]):
            expect = step.get("expect")
            if isinstance(expect, Mapping):
                for k, rule_id in enumerate(expect.get("rules", [])):
                    yield self.at + ["steps", index, "expect", "rules", k], rule_id


@dataclass
class _Suite:
    file: RuleFile
    rule_paths: list[Path]
    tests: list[_Test]


def load_test_file(path: str | Path) -> _Suite:
    """Read and check one test file; RulesError (file:line:column) on the first problem."""
    rule_file = read_fast(path)
    doc = _plain(rule_file.doc)
    if not isinstance(doc, Mapping):
        raise problem(rule_file, [], "invalid", "a rule test file is a mapping starting with 'version: 1'")
    errors = sorted((schema_problem(rule_file, e) for e in _schema().iter_errors(doc)),
                    key=lambda p: (p.line, p.column))
    if errors:
        raise errors[0]
    base = rule_file.path.parent
    if "rule_files" in doc:
        rule_paths = []
        for index, name in enumerate(doc["rule_files"]):
            target = (base / name).resolve()
            if not target.is_file():
                raise problem(rule_file, ["rule_files", index], "invalid", f"no rule file {name!r} next to this test",
                              f"paths are relative to {base}")
            rule_paths.append(target)
    else:
        try:
            rule_paths = guardrail_paths(base)
        except RulesError as exc:
            raise problem(rule_file, [], "invalid", f"no guardrail files beside this test ({exc.reason})",
                          "add rule_files: [...]") from None
    shared = _topology(doc.get("topology"), rule_file, ["topology"]) if "topology" in doc else None
    tests = []
    for index, test in enumerate(doc["tests"]):
        at = ["tests", index]
        topology = _topology(test["topology"], rule_file, at + ["topology"]) if "topology" in test else shared
        if topology is None:
            raise problem(rule_file, at, "invalid", f"test {test['name']!r} has no topology",
                          "give the file or the test a topology: an inline {entities, relations} or a file path")
        start = _time(test.get("start", DEFAULT_START.isoformat()), DEFAULT_START, rule_file, at + ["start"])
        for k, step in enumerate(test["steps"]):
            _time(step.get("at", 0), start, rule_file, at + ["steps", k, "at"])
        for k, item in enumerate(test.get("history", [])):
            _time(item["at"], start, rule_file, at + ["history", k, "at"])
        tests.append(_Test(test["name"], rule_file.locate(at)[0], test, at, topology, start))
    return _Suite(rule_file, rule_paths, tests)


def _run(test: _Test, guard: Guard, suite: _Suite, hits: dict[str, int]) -> list[StepResult]:
    doc, file = test.doc, suite.file
    history = MemoryHistory([RecordedAction(_time(h["at"], test.start, file, []), h["action"], h["target"])
                             for h in doc.get("history", []) for _ in range(h.get("count", 1))])
    state = StaticState(doc.get("state"))
    results = []
    for index, step in enumerate(doc["steps"]):
        if "state" in step:
            state = StaticState(step["state"])
        at = _time(step.get("at", 0), test.start, file, [])
        raw = step["propose"]
        proposal = Proposal(type=raw["type"], target=raw["target"], params=raw.get("params", {}),
                            cause=raw.get("cause"), proposed_by=raw.get("proposed_by", "deterministic"))
        incident = {**doc.get("incident", {}), **step.get("incident", {})}
        told = step.get("diagnosis", doc.get("diagnosis"))
        verdict = guard.evaluate(proposal, topology=test.topology,
                                 incident_entities=incident.get("entities", [proposal.target]),
                                 incident_id=incident.get("id", "inc-test"),
                                 incident_severity=incident.get("severity", "error"), at=at,
                                 history=history, state=state,
                                 diagnosis=Diagnosis.model_validate(told) if told else None)
        for rule_id in verdict.rules:
            if rule_id in guard._rules:
                hits[rule_id] = hits.get(rule_id, 0) + 1
        if verdict.outcome == "allow" and step.get("record", True):
            history.record(proposal.type, proposal.target, at, incident_id=incident.get("id", "inc-test"))
        expect = step.get("expect", {})
        expected = {"outcome": expect} if isinstance(expect, str) else dict(expect)
        got = {"outcome": verdict.outcome, "rules": verdict.rules, "approver_role": verdict.approver_role,
               "reasons": verdict.reasons}
        result = StepResult(str(file.path), file.locate(test.at + ["steps", index])[0], test.name, index + 1, at,
                            proposal.model_dump(exclude_defaults=True), expected, got)
        if "rules" in expected:
            result.missing = [r for r in expected["rules"] if r not in verdict.rules]
            result.unexpected = [r for r in verdict.rules if r not in expected["rules"]]
        results.append(result)
    return results


def _topology(value: Any, rule_file: RuleFile, where: list) -> Topology:
    try:
        if isinstance(value, str):
            return Topology.load(rule_file.path.parent / value)
        return Topology.from_dict(value, origin=f"{rule_file.path} {'.'.join(map(str, where))}")
    except TopologyError as exc:
        raise problem(rule_file, where, "invalid", f"topology: {exc}") from None


def _time(value: Any, start: datetime, rule_file: RuleFile, where: list) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return start + timedelta(seconds=value)
    found = _OFFSET.match(str(value))
    if found:
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]
        return start + timedelta(seconds=float(found[1]) * scale)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise problem(rule_file, where, "invalid", f"{value!r} is not a time",
                      "an offset such as 5m or -1h, or an ISO date-time such as 2024-03-20T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _problem_dict(error: RulesError) -> dict[str, Any]:
    return error.to_dict() if isinstance(error, RuleProblem) else {**error.to_dict(), "kind": "invalid", "rule": None}


@lru_cache(maxsize=1)
def _schema() -> Draft202012Validator:
    text = (resources.files("rules") / "schemas" / "guardrail-tests.v1.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))
