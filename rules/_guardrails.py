"""Guardrail files: read, validate and turn into a `Ruleset` the guard can compile.

A guardrail file is YAML (`version: 1`, then `rules:`), checked against `schemas/guardrails.v1.json`
(rules/_guardrail_schema.py says where a file breaks it). Mistakes are refused at load time, never at
evaluation time, and every refusal names the file, line and column of the offending key (positions come
from `_files`, shared with detection). A guardrail
that silently never matches is worse than none, which is also why a condition may only name fields
the guard's context fact has (CONTEXT_FIELDS); `rules check` (rules/_check.py) goes further.

`load_guardrails` raises the first problem; `collect_guardrails` gathers every problem (all of each
bad rule: schema, context fields, conditions, gates) and returns the rules that are fine, for
`rtem rules check`. Test files (`*.test.yaml`) beside
the rules are not rules and are skipped when a directory is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from rules._engine import MAX_BRANCHES, ConditionError, compile_condition, condition_branches
from rules._files import RuleFile, RulesError, content_digest, read_fast
from rules._schema_errors import did_you_mean
from rules._guardrail_schema import (RuleProblem, dotted_path, fast_validator, problem, rule_id_at, schema_problems,
                                     validator)
from rules._fitness import FITNESS_FIELDS, FITNESS_PREFIX, RemedyOverride, read_remedies
from rules._gates import Gates, gate_problems, parse_gates
from rules._proposal import Outcome

SUPPORTED_VERSION = 1
RESERVED_PREFIXES = ("contract.", "guard.", FITNESS_PREFIX)  # the guard's built-in checks use these ids
TEST_SUFFIX = ".test.yaml"
# What a guardrail condition may name; rules/_guard.py (context_fact) documents each field.
CONTEXT_FIELDS = frozenset({
    "action", "risk", "proposed_by", "cause",
    "target", "target_type", "target_tier", "target_service", "target_labels",
    "incident_id", "incident_severity", "incident_severity_rank", "in_blast_radius",
    "hour", "minute", "weekday", "date", "params",
}) | FITNESS_FIELDS
CONTEXT_PREFIXES = ("params.", "target_labels.")
GATE_KEYS = ("during", "outside", "state", "limit", "cap")


class Guardrail(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    description: str = ""
    match: dict[str, Any] = Field(default_factory=dict)
    during: tuple[dict[str, Any], ...] = ()
    outside: tuple[dict[str, Any], ...] = ()
    state: dict[str, Any] | None = None
    limit: dict[str, Any] | None = None
    cap: dict[str, Any] | None = None
    outcome: Outcome
    approver_role: str | None = None
    reason: str
    source: str
    line: int
    gates: SkipValidation[Gates] = Field(default_factory=Gates, exclude=True, repr=False)

    def definition(self) -> dict[str, Any]:
        """What the rule says, without where it was written: two rules with the same definition act alike."""
        return self.model_dump(exclude={"source", "line"}, exclude_defaults=True)


class Ruleset(BaseModel):
    """The loaded guardrails in evaluation order (files sorted by name, rules in file order)."""

    model_config = ConfigDict(frozen=True)

    rules: tuple[Guardrail, ...] = ()
    digest: str
    sources: tuple[str, ...] = ()
    remedies: dict[str, RemedyOverride] = Field(default_factory=dict, description="action -> the remedy terms "
                                                "the files replace (the last file to name a term wins)")


def load_guardrails(source: str | Path | Iterable[str | Path] | None = None) -> Ruleset:
    """Load guardrail files: one file, a directory of `*.yaml`/`*.yml`, several of either, or by default
    the packaged `rules/guardrails/`. Files are read in name order; `digest` is `content_digest` over
    their names and text, so the same files give the same digest wherever they are installed.
    Raises RulesError (file:line:column, reason, hint) on the first problem.
    """
    problems: list[RulesError] = []
    ruleset = collect_guardrails(source, problems)
    if problems:
        raise problems[0]
    return ruleset


def collect_guardrails(source: str | Path | Iterable[str | Path] | None, problems: list[RulesError],
                       read: dict[str, RuleFile] | None = None) -> Ruleset:
    """Like load_guardrails, but every problem goes to `problems` (file order, then line) and the rules
    without one are returned. A missing source or an unreadable file is a problem too. `read`, when
    given, receives every file read (by path), for callers that point at places inside them."""
    files: list[RuleFile] = []
    try:
        paths = guardrail_paths(source)
    except RulesError as exc:
        problems.append(exc)
        return Ruleset(digest=content_digest([]))
    rules: list[Guardrail] = []
    remedies: dict[str, RemedyOverride] = {}
    seen: dict[str, Guardrail] = {}
    for path in paths:
        try:
            rule_file = read_fast(path)
        except RulesError as exc:
            problems.append(exc)
            continue
        files.append(rule_file)
        if read is not None:
            read[str(rule_file.path)] = rule_file
        found: list[RulesError] = []
        for rule in parse_guardrails(rule_file, found):
            if rule.id in seen:
                first = seen[rule.id]
                found.append(problem(rule_file, ["rules", _index_at(rule_file, rule.line), "id"], "duplicate_id",
                                     f"duplicate rule id {rule.id!r}",
                                     f"first defined at {first.source}:{first.line}; ids are unique across files",
                                     rule=rule.id))
                continue
            seen[rule.id] = rule
            rules.append(rule)
        problems.extend(sorted(found, key=lambda p: (p.line, p.column)))
        read_remedies(rule_file, remedies)
    return Ruleset(rules=tuple(rules), digest=content_digest(files), sources=tuple(str(f.path) for f in files),
                   remedies=remedies)


def parse_guardrails(rule_file: RuleFile, problems: list[RulesError] | None = None) -> list[Guardrail]:
    """The rules of one guardrail file. Without `problems`, the first problem (by line) is raised;
    with it, every problem is appended and the good rules returned."""
    found: list[RulesError] = []
    rules = _parse(rule_file, found)
    if problems is None:
        if found:
            raise min(found, key=lambda p: (p.line, p.column))
        return rules
    problems.extend(found)
    return rules


def _parse(rule_file: RuleFile, problems: list[RulesError]) -> list[Guardrail]:
    doc = rule_file.doc
    for (where, _, _), repeated in zip(rule_file.duplicates, rule_file.duplicate_problems()):
        problems.append(RuleProblem(repeated.file, repeated.line, repeated.column, repeated.reason, repeated.hint,
                                    "duplicate_key", rule_id_at(doc, list(where)), repeated.key))
    if not isinstance(doc, Mapping):
        problems.append(problem(rule_file, [], "invalid",
                                f"a guardrail file is a mapping starting with 'version: {SUPPORTED_VERSION}'"))
        return []
    if "version" not in doc:
        typo = next((k for k in doc if did_you_mean(k, ["version"])), None)
        if typo is not None:
            problems.append(problem(rule_file, [typo], "unknown_field", f"unknown field {typo!r}",
                                    f"did you mean 'version'? the file must start with 'version: {SUPPORTED_VERSION}'"))
        else:
            problems.append(problem(rule_file, [], "invalid",
                                    f"the file must start with 'version: {SUPPORTED_VERSION}'",
                                    f"add 'version: {SUPPORTED_VERSION}' as the first line"))
        return []
    if doc["version"] != SUPPORTED_VERSION:
        problems.append(problem(rule_file, ["version"], "invalid", f"version {doc['version']!r} is not supported",
                                f"this rtem reads version {SUPPORTED_VERSION}"))
        return []
    doc = _plain(doc)
    bad: dict[int, list[RulesError]] = {}  # rule index → its schema problems
    try:
        fast_validator()(doc)
    except fastjsonschema.JsonSchemaException:
        # The fast validator only says "no"; the reference one says where and why, for every error.
        for found in schema_problems(rule_file, list(validator().iter_errors(doc))):
            where = found.where
            if len(where) >= 2 and where[0] == "rules" and isinstance(where[1], int):
                bad.setdefault(where[1], []).append(found)
            else:
                problems.append(found)
    if not isinstance(doc.get("rules"), list):
        return []
    rules = []
    for index, rule in enumerate(doc["rules"]):
        at = ["rules", index]
        found = list(bad.get(index, []))
        if isinstance(rule, Mapping):
            # Check what the schema let through too, so one run shows every problem of the rule.
            broken = {p.where[2] for p in found if len(p.where) > 2}
            found += _rule_problems(rule, rule_file, at, broken)
        problems.extend(_unique(found))
        if found:
            continue
        line, _ = rule_file.locate(at)
        fields = {k: (tuple(v) if k in ("during", "outside") else v) for k, v in rule.items()}
        rules.append(Guardrail(**fields, source=str(rule_file.path), line=line, gates=parse_gates(rule)))
    return rules


def _unique(found: list[RulesError]) -> list[RulesError]:
    """One problem per place and key: the schema and the gate checks may both object to the same value
    (two missing keys share the place of their mapping, and both stay)."""
    seen: set[tuple[int, int, str | None]] = set()
    kept = []
    for item in sorted(found, key=lambda p: (p.line, p.column)):
        if (item.line, item.column, item.key) not in seen:
            seen.add((item.line, item.column, item.key))
            kept.append(item)
    return kept


def _rule_problems(rule: Mapping[str, Any], rule_file: RuleFile, at: list, broken: set) -> list[RulesError]:
    """Everything wrong with one rule beyond its schema: reserved ids, unknown context fields,
    conditions that do not compile, gates that cannot work. Runs on rules the schema refused too,
    so one run shows every problem; `broken` names the rule's keys the schema refused, whose
    conditions are not compiled (it would only repeat the schema's words)."""
    found: list[RulesError] = []
    rule_id = rule.get("id") if isinstance(rule.get("id"), str) else None
    if rule_id is not None and rule_id.startswith(RESERVED_PREFIXES):
        found.append(problem(rule_file, at + ["id"], "reserved_id", f"rule id {rule_id!r} is reserved",
                             f"ids starting with {' or '.join(RESERVED_PREFIXES)} name the guard's built-in checks",
                             rule=rule_id))
    if "approver_role" in rule and "outcome" in rule and rule["outcome"] != "require_approval":
        found.append(problem(rule_file, at + ["approver_role"], "invalid",
                             f"{dotted_path(at)}: approver_role goes only with outcome: require_approval",
                             "remove approver_role, or set outcome: require_approval", rule=rule_id))
    match = rule.get("match")
    if isinstance(match, Mapping):
        for path in _fields(match, ["match"]):
            field = path[-1]  # YAML keys may be numbers or null
            if not isinstance(field, str) or field not in CONTEXT_FIELDS and not field.startswith(CONTEXT_PREFIXES):
                known = ", ".join(sorted(CONTEXT_FIELDS))
                guess = did_you_mean(field, CONTEXT_FIELDS)
                hint = f"a guardrail can match {known}, params.<name>, target_labels.<name>"
                if guess:  # the whole list only when there is no likely candidate: it is long
                    hint = f"did you mean {guess!r}? (docs/rules.md lists the fields a guardrail can match)"
                found.append(problem(rule_file, at + path, "unknown_field",
                                     f"{dotted_path(at + path)}: unknown field {field!r}", hint, rule=rule_id))
    for key in ("match", "state"):
        condition = rule.get(key)
        if condition is None or key in broken or not isinstance(condition, Mapping):
            continue
        branches = condition_branches(condition)
        if branches > MAX_BRANCHES:
            found.append(problem(rule_file, at + [key], "invalid",
                                 f"{dotted_path(at)}.{key} has {branches} alternatives, over {MAX_BRANCHES}",
                                 "split the rule, or shorten its 'in' lists and 'any' branches", rule=rule_id))
            continue
        try:
            compile_condition(condition, {}, key)
        except ConditionError as exc:
            path = at + [key] + _condition_path(condition, exc.path.removeprefix(key))
            found.append(problem(rule_file, path, "invalid", f"{dotted_path(at)}.{exc.path}: {exc.reason}",
                                 rule=rule_id))
    for exc in gate_problems(rule):
        found.append(problem(rule_file, at + list(exc.path), "invalid", f"{dotted_path(at + list(exc.path))}: {exc}",
                             exc.hint, rule=rule_id))
    return found


def _fields(condition: Mapping[str, Any], path: list) -> Iterator[list]:
    for key, value in condition.items():
        if key in ("all", "any"):
            for index, nested in enumerate(value if isinstance(value, list) else []):
                if isinstance(nested, Mapping):  # anything else is the schema's to report
                    yield from _fields(nested, path + [key, index])
        else:
            yield path + [key]


def _condition_path(node: Any, dotted: str) -> list:
    """Turn a ConditionError path (`.all[0].params.replicas.gt`) back into keys; field names may hold dots."""
    path: list = []
    rest = dotted
    while rest:
        if rest.startswith("[") and isinstance(node, list):
            index = int(rest[1:rest.index("]")])
            if index >= len(node):
                break
            path.append(index)
            node, rest = node[index], rest[rest.index("]") + 1:]
            continue
        rest = rest.removeprefix(".")
        if not isinstance(node, Mapping):
            break
        keys = sorted(map(str, node), key=len, reverse=True)
        key = next((k for k in keys if rest == k or rest.startswith((k + ".", k + "["))), None)
        if key is None:
            break
        path.append(key)
        node, rest = node[key], rest[len(key):]
    return path


def _index_at(rule_file: RuleFile, line: int) -> int:
    rules = rule_file.doc.get("rules", []) if isinstance(rule_file.doc, Mapping) else []
    return next((i for i in range(len(rules)) if rule_file.locate(["rules", i])[0] == line), 0)


def _plain(value: Any) -> Any:
    """YAML turns unquoted dates and times into date objects; rules compare strings (`date: 2024-12-24`)."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def guardrail_paths(source: str | Path | Iterable[str | Path] | None = None) -> list[Path]:
    """The files load_guardrails would read, in evaluation order."""
    if source is None:
        source = Path(str(resources.files("rules") / "guardrails"))
    found: list[Path] = []
    for item in [source] if isinstance(source, str | Path) else source:
        path = Path(item)
        if path.is_dir():
            inside = [f for f in path.iterdir() if f.suffix in (".yaml", ".yml") and not is_rule_test(f)]
            if not inside:
                raise RulesError(path, 1, 1, "no guardrail files (*.yaml, *.yml) in this directory")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise RulesError(path, 1, 1, "no such file or directory")
    return sorted(found, key=lambda f: (f.name, str(f)))


def is_rule_test(path: Path) -> bool:
    """A rule test file (`*.test.yaml`, `*.test.yml`), which sits beside the guardrails and is no guardrail."""
    return path.name.endswith((TEST_SUFFIX, ".test.yml"))
