"""`rtem rules check`: everything wrong with a rules directory, each at file:line:column with a hint.

A rules directory holds `guardrails/` (with the `*.test.yaml` rule tests beside them), `contracts/`
and `detect/`; any of them may be missing (missing contracts: the packaged ones are used to judge the
guardrails). A guardrails or contracts directory, or a single file, can be checked on its own.

The check reads and validates every file against its schema, compiles it exactly as rtem would, and
then analyses the guardrails (rules/_analysis.py): unknown action types, rules that can never match,
rules shadowed by a deny. It collects every problem instead of stopping at the first, and it is fast
enough for a pre-commit hook (libyaml, a compiled schema validator, one compile of the rule set).
The same check gates hot reloads (agent/rules_reload.py), so what `check` accepts is what `run` loads.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rules._analysis import analyze
from rules._contracts import ActionContract, ContractError, check_contracts
from rules._detection import DetectionSet, collect_detections
from rules._engine import ConditionError
from rules._escalation import POLICY_FILE, EscalationPolicy, collect_escalation
from rules._files import RuleFile, RulesError, read_fast
from rules._schema_errors import did_you_mean
from rules._guard import Guard
from rules._guardrails import Guardrail, Ruleset, collect_guardrails, guardrail_paths, is_rule_test

KINDS = ("guardrails", "contracts", "detect")


@dataclass
class Finding:
    """One problem: where (file, line, column, the offending key), what, and what to do about it.
    `severity` error fails the check; warning does not. `hint` is the suggestion."""

    severity: str
    kind: str
    file: str
    line: int
    column: int
    message: str
    hint: str = ""
    rule: str | None = None
    key: str | None = None

    @property
    def suggestion(self) -> str:
        return self.hint

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.severity}[{self.kind}]: {self.message}"
        return text + (f" ({self.hint})" if self.hint else "")

    def to_dict(self) -> dict[str, Any]:
        # "hint" stays beside "suggestion" for readers of the older output
        return {"severity": self.severity, "kind": self.kind, "file": self.file, "line": self.line,
                "column": self.column, "key": self.key, "message": self.message, "suggestion": self.hint,
                "hint": self.hint, "rule": self.rule}

    @classmethod
    def from_error(cls, error: RulesError, kind: str | None = None, severity: str = "error") -> Finding:
        """`kind` names the kind of file (detection, escalation, …); a YAML syntax error keeps its own."""
        own = getattr(error, "kind", "invalid")
        kind = own if own == "yaml_syntax" or kind is None else kind
        return cls(severity, kind, error.file, error.line, error.column,
                   error.reason, error.hint, getattr(error, "rule", None), getattr(error, "key", None))


@dataclass
class Layout:
    """Where the parts of a rule set are; None means absent (contracts: use the packaged ones)."""

    root: Path
    guardrails: list[Path] | None = None
    contracts: Path | None = None
    detect: Path | None = None
    tests: list[Path] = field(default_factory=list)
    escalation: Path | None = None  # the escalation policy file (optional)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "guardrails": [str(p) for p in self.guardrails or []],
                "contracts": str(self.contracts) if self.contracts else "packaged",
                "detect": str(self.detect) if self.detect else None, "tests": [str(p) for p in self.tests],
                "escalation": str(self.escalation) if self.escalation else None}


@dataclass
class CheckReport:
    layout: Layout
    findings: list[Finding] = field(default_factory=list)
    guardrails: Ruleset | None = None
    contracts: dict[str, ActionContract] = field(default_factory=dict)
    detections: DetectionSet | None = None
    guard: Guard | None = None
    escalation: EscalationPolicy | None = None
    elapsed_s: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def digest(self) -> str:
        """One version for the whole rule set: guardrails, contracts and detections."""
        return rules_digest(self.guardrails, self.contracts, self.detections)

    def counts(self) -> dict[str, int]:
        return {"guardrail_files": len(self.layout.guardrails or []),
                "guardrails": len(self.guardrails.rules) if self.guardrails else 0,
                "contracts": len(self.contracts),
                "detections": len(self.detections.detections) if self.detections else 0,
                "test_files": len(self.layout.tests),
                "escalation_routes": len(self.escalation.routes) if self.escalation else 0,
                "errors": len(self.errors), "warnings": len(self.warnings)}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "digest": self.digest if self.ok else None, "layout": self.layout.to_dict(),
                "counts": self.counts(), "elapsed_s": round(self.elapsed_s, 4),
                "findings": [f.to_dict() for f in self.findings]}


def packaged_rules_dir() -> Path:
    return Path(str(resources.files("rules")))


def rules_digest(guardrails: Ruleset | None, contracts: Mapping[str, ActionContract],
                 detections: DetectionSet | None) -> str:
    parts = [f"guardrails={guardrails.digest if guardrails else ''}",
             f"detections={detections.digest if detections else ''}",
             *(f"contract:{name}={c.digest}" for name, c in sorted(contracts.items()))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def find_layout(path: str | Path | None = None) -> Layout:
    """Work out what `path` is: a rules directory, a guardrails/contracts/detect directory, or a file.
    Raises FileNotFoundError when it does not exist."""
    path = Path(path) if path is not None else packaged_rules_dir()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name in (POLICY_FILE, "escalation.yml") or _is_escalation_file(path):
            return Layout(path.parent, escalation=path)
        if path.suffix == ".json":
            return Layout(path.parent, contracts=path.parent)
        if is_rule_test(path):
            return Layout(path.parent, tests=[path], contracts=_sibling(path.parent, "contracts"))
        if _is_detection_file(path):
            return Layout(path.parent, detect=path.parent)
        return Layout(path.parent, guardrails=[path], contracts=_sibling(path.parent, "contracts"))
    if any((path / kind).is_dir() for kind in KINDS):
        guardrails = path / "guardrails"
        return Layout(path, guardrails=_guardrail_files(guardrails) if guardrails.is_dir() else None,
                      contracts=path / "contracts" if (path / "contracts").is_dir() else None,
                      detect=path / "detect" if (path / "detect").is_dir() else None,
                      tests=_tests(guardrails) if guardrails.is_dir() else [],
                      escalation=path / POLICY_FILE if (path / POLICY_FILE).is_file() else None)
    yamls = [f for f in path.iterdir() if f.suffix in (".yaml", ".yml")]
    if not yamls and any(f.suffix == ".json" for f in path.iterdir()):
        return Layout(path, contracts=path)
    if yamls and all(_is_detection_file(f) for f in yamls):
        return Layout(path, detect=path)
    return Layout(path, guardrails=_guardrail_files(path), contracts=_sibling(path, "contracts"), tests=_tests(path))


def check_rules(path: str | Path | None = None, *, now: datetime | None = None) -> CheckReport:
    """Check a rule set; see the module docstring. `now` (default: the wall clock) only decides which
    one-off windows have ended, for a warning."""
    started = time.perf_counter()
    layout = find_layout(path)
    report = CheckReport(layout)
    now = now or datetime.now(timezone.utc)

    contracts, contract_problems = check_contracts(layout.contracts)
    report.contracts = contracts
    report.findings.extend(_contract_finding(p) for p in contract_problems)
    if layout.contracts is None and not contracts:
        report.contracts = contracts = check_contracts(None)[0]

    if layout.escalation is not None:
        escalation_problems: list[RulesError] = []
        report.escalation = collect_escalation(layout.escalation, escalation_problems)
        report.findings.extend(Finding.from_error(p, kind="escalation") for p in escalation_problems)

    if layout.guardrails is not None:
        problems: list[RulesError] = []
        read: dict[str, RuleFile] = {}
        ruleset = collect_guardrails(layout.guardrails, problems, read) if layout.guardrails else None
        if not layout.guardrails:
            problems.append(RulesError(layout.root, 1, 1, "no guardrail files (*.yaml, *.yml) in this directory"))
        report.findings.extend(Finding.from_error(p) for p in problems)
        if ruleset is not None:
            report.guardrails = ruleset
            # A contract that failed to load is still an action type: do not call it unknown. The deeper
            # analysis needs every contract, so it waits until they load.
            broken = {Path(p.source).name.removesuffix(".json") for p in contract_problems}
            report.findings.extend(_analysis_findings(ruleset, contracts, read, now, broken))
            report.findings.extend(_refused_rule_findings(ruleset, contracts, read, now, broken, report.findings))
            report.findings.extend(_remedy_findings(ruleset, contracts, broken))
            try:
                report.guard = Guard(ruleset, contracts)
            except (ConditionError, RuntimeError) as exc:  # pragma: no cover - load-time checks catch these
                report.findings.append(Finding("error", "compile", layout.root.name, 1, 1,
                                               f"the guardrails do not compile: {exc}"))

    if layout.detect is not None:
        detection_problems: list[RulesError] = []
        detections = collect_detections(layout.detect, detection_problems)
        report.findings.extend(Finding.from_error(p, kind="detection") for p in detection_problems)
        if not detection_problems:
            report.detections = detections

    for test_file in layout.tests:
        from rules._ruletest import load_test_file  # tests are optional; keep the import off the hot path

        try:
            load_test_file(test_file)
        except RulesError as exc:
            report.findings.append(Finding.from_error(exc, kind="rule_test"))

    report.findings.sort(key=lambda f: (f.file, f.line, f.column))
    report.elapsed_s = time.perf_counter() - started
    return report


def _analysis_findings(ruleset: Ruleset, contracts: Mapping[str, ActionContract], read: dict[str, RuleFile],
                       now: datetime, broken: set[str]) -> list[Finding]:
    index: dict[tuple[str, int], int] = {}
    for source, rule_file in read.items():
        rules = rule_file.doc.get("rules", []) if isinstance(rule_file.doc, Mapping) else []
        for i in range(len(rules) if isinstance(rules, list) else 0):
            index[(source, rule_file.locate(["rules", i])[0])] = i
    found = []
    for item in analyze(list(ruleset.rules), contracts, now, broken=broken):
        rule = item.rule
        rule_file = read[rule.source]
        line, column = rule_file.locate(["rules", index[(rule.source, rule.line)], *item.path])
        found.append(Finding(item.severity, item.kind, rule.source, line, column, f"rule {rule.id!r} {item.message}",
                             item.hint, rule.id, _field_key(tuple(item.path))))
    return found


def _remedy_findings(ruleset: Ruleset, contracts: Mapping[str, ActionContract], broken: set[str]) -> list[Finding]:
    """A `remedies:` entry for an action type without a contract would silently judge nothing."""
    found = []
    for action, override in ruleset.remedies.items():
        if action in contracts or action in broken:
            continue
        found.append(Finding("error", "unknown_action", override.file, override.line, override.column,
                             f"remedies names unknown action type {action!r}",
                             f"known actions: {', '.join(sorted(contracts))}" + (
                                 f"; did you mean {did_you_mean(action, contracts)!r}?"
                                 if did_you_mean(action, contracts) else ""), key=action))
    return found


_MATCH_ONLY = {"unknown_action", "never_matches"}  # what a rule's match alone can show


def _refused_rule_findings(ruleset: Ruleset, contracts: Mapping[str, ActionContract], read: dict[str, RuleFile],
                           now: datetime, broken: set[str], found: list[Finding]) -> list[Finding]:
    """What the analysis says about the `match` of rules refused for another reason (a typo in
    `outcome`, a bad time zone): an unknown action type there would otherwise show only in the next run.
    Shadowing needs the whole rule, so it waits until the rule loads."""
    loaded = {(r.source, r.line) for r in ruleset.rules}
    proxies, where = [], {}
    for source, rule_file in read.items():
        rules = rule_file.doc.get("rules") if isinstance(rule_file.doc, Mapping) else None
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            line = rule_file.locate(["rules", index])[0]
            if (source, line) in loaded or not isinstance(rule, Mapping) or not isinstance(rule.get("id"), str):
                continue
            match_line = rule_file.locate(["rules", index, "match"])
            match_end = _next_key_line(rule_file, index, "match")
            if not isinstance(rule.get("match"), Mapping) or any(
                    f.file == source and match_line <= (f.line, f.column) < match_end for f in found):
                continue  # no match, or one already refused: the analysis would only repeat it
            try:
                proxy = Guardrail(id=rule["id"], match=rule["match"], outcome="allow", reason="-", source=source,
                                  line=line)
            except ValueError:
                continue
            proxies.append(proxy)
            where[(source, line)] = index
    result = []
    for item in analyze(proxies, contracts, now, broken=broken):
        if item.kind not in _MATCH_ONLY or item.severity != "error":
            continue
        rule = item.rule
        line, column = read[rule.source].locate(["rules", where[(rule.source, rule.line)], *item.path])
        result.append(Finding(item.severity, item.kind, rule.source, line, column, f"rule {rule.id!r} {item.message}",
                              item.hint, rule.id, _field_key(item.path)))
    return result


def _next_key_line(rule_file: RuleFile, index: int, key: str) -> tuple[int, int]:
    """Where whatever follows `key` in rule `index` starts: the end of that key's value, roughly."""
    start = rule_file.locate(["rules", index, key])
    after = [pos for path, pos in rule_file.marks.items()
             if len(path) == 3 and path[:2] == ("rules", index) and pos > start]
    following = [pos for path, pos in rule_file.marks.items()
                 if len(path) == 2 and path[0] == "rules" and isinstance(path[1], int) and pos > start]
    return min(after + following, default=(10**9, 0))


_OPERATORS = {"eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "exists", "matches", "all", "any"}


def _field_key(path: tuple) -> str | None:
    """The field a finding inside a condition is about (`action`, not the `in` of `action: {in: …}`)."""
    return next((str(p) for p in reversed(path) if isinstance(p, str) and p not in _OPERATORS), None)


def _contract_finding(error: ContractError) -> Finding:
    line, column = 1, 1
    if error.position:
        line, column = error.position
    elif error.path and Path(error.source).is_file():
        try:
            rule_file = read_fast(error.source)
            line, column = rule_file.locate(_json_path(error.path))
        except RulesError:
            pass
    reason = error.reason
    if error.path and reason.startswith(error.path + ":"):
        reason = reason[len(error.path) + 1:].strip()
        reason = f"{error.path}: {reason}"
    key = _json_path(error.path)[-1:] if error.path else []
    return Finding("error", error.kind, error.source, line, column, reason, error.hint,
                   key=str(key[0]) if key and isinstance(key[0], str) else None)


def _json_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index, quoted in re.findall(r'\.([A-Za-z_$][A-Za-z0-9_$-]*)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]',
                                          path.removeprefix("$")):
        parts.append(int(index) if index else (name or quoted))
    return parts


def _guardrail_files(directory: Path) -> list[Path]:
    try:
        return guardrail_paths(directory)
    except RulesError:
        return []


def _tests(directory: Path) -> list[Path]:
    return sorted(f for f in directory.iterdir() if is_rule_test(f))


def _sibling(directory: Path, name: str) -> Path | None:
    candidate = directory.parent / name
    return candidate if directory.name == "guardrails" and candidate.is_dir() else None


def _is_escalation_file(path: Path) -> bool:
    """A YAML file whose top level has `routes`: an escalation policy under another name."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            return bool(re.search(r"^routes:", handle.read(4096), re.M))
    except (OSError, UnicodeDecodeError):
        return False


def _is_detection_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    try:
        doc = yaml.load(head, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: a scalar PyYAML cannot build (+24:00)
        return bool(re.search(r"^detections:", head, re.M))
    return isinstance(doc, Mapping) and "detections" in doc
