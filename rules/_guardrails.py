"""Guardrail files: read, validate and turn into a `Ruleset` the guard can compile.

A guardrail file is YAML (`version: 1`, then `rules:`), checked against `schemas/guardrails.v1.json`.
Mistakes are refused at load time, never at evaluation time, and every refusal names the file, line
and column of the offending key (positions come from `_files`, shared with detection). A guardrail
that silently never matches is worse than none, which is also why a condition may only name fields
the guard's context fact has (CONTEXT_FIELDS); `rules check` (rules/_check.py) goes further.

`load_guardrails` raises the first problem; `collect_guardrails` gathers every problem (one per bad
rule) and returns the rules that are fine, for `rtem rules check`. Test files (`*.test.yaml`) beside
the rules are not rules and are skipped when a directory is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from rules._engine import MAX_BRANCHES, ConditionError, compile_condition, condition_branches
from rules._files import RuleFile, RulesError, content_digest, node_marks, read_rule_file
from rules._gates import GateError, Gates, parse_gates
from rules._proposal import Outcome

SUPPORTED_VERSION = 1
RESERVED_PREFIXES = ("contract.", "guard.")  # the guard's built-in checks use these ids
TEST_SUFFIX = ".test.yaml"
# What a guardrail condition may name; rules/_guard.py (context_fact) documents each field.
CONTEXT_FIELDS = frozenset({
    "action", "risk", "proposed_by", "cause",
    "target", "target_type", "target_tier", "target_service", "target_labels",
    "incident_id", "incident_severity", "incident_severity_rank", "in_blast_radius",
    "hour", "minute", "weekday", "date", "params",
})
CONTEXT_PREFIXES = ("params.", "target_labels.")
GATE_KEYS = ("during", "outside", "state", "limit", "cap")


class RuleProblem(RulesError):
    """A RulesError with a kind, so `rules check` can group and explain it (unknown_field,
    duplicate_id, unknown_action, never_matches, shadowed, …)."""

    def __init__(self, file: str | Path, line: int, column: int, reason: str, hint: str = "",
                 kind: str = "invalid", rule: str | None = None):
        super().__init__(file, line, column, reason, hint)
        self.kind = kind
        self.rule = rule

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kind": self.kind, "rule": self.rule}


def problem(rule_file: RuleFile, path: Iterable[str | int], kind: str, reason: str, hint: str = "",
            rule: str | None = None) -> RuleProblem:
    line, column = rule_file.locate(list(path))
    return RuleProblem(rule_file.path, line, column, reason, hint, kind, rule)


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
        paths = _paths(source)
    except RulesError as exc:
        problems.append(exc)
        return Ruleset(digest=content_digest([]))
    rules: list[Guardrail] = []
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
    return Ruleset(rules=tuple(rules), digest=content_digest(files), sources=tuple(str(f.path) for f in files))


def parse_guardrails(rule_file: RuleFile, problems: list[RulesError] | None = None) -> list[Guardrail]:
    """The rules of one guardrail file. Without `problems`, the first problem (by line) is raised;
    with it, problems are appended (one per bad rule) and the good rules returned."""
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
    if not isinstance(doc, Mapping):
        problems.append(problem(rule_file, [], "invalid",
                                f"a guardrail file is a mapping starting with 'version: {SUPPORTED_VERSION}'"))
        return []
    if "version" not in doc:
        problems.append(problem(rule_file, [], "invalid", f"the file must start with 'version: {SUPPORTED_VERSION}'"))
        return []
    if doc["version"] != SUPPORTED_VERSION:
        problems.append(problem(rule_file, ["version"], "invalid", f"version {doc['version']!r} is not supported",
                                f"this rtem reads version {SUPPORTED_VERSION}"))
        return []
    doc = _plain(doc)
    bad: dict[int, RulesError] = {}
    try:
        _fast_schema()(doc)
    except fastjsonschema.JsonSchemaException:
        # The fast validator only says "no"; the reference one says where and why, for every error.
        for error in _schema().iter_errors(doc):
            found = _schema_problem(rule_file, error)
            where = list(error.absolute_path)
            if len(where) >= 2 and where[0] == "rules" and isinstance(where[1], int):
                if where[1] not in bad or (found.line, found.column) < (bad[where[1]].line, bad[where[1]].column):
                    bad[where[1]] = found
            else:
                problems.append(found)
        if problems or not isinstance(doc.get("rules"), list):
            return []
    problems.extend(bad.values())
    rules = []
    for index, rule in enumerate(doc["rules"]):
        if index in bad:
            continue
        at = ["rules", index]
        failure = _check_rule(rule, rule_file, at)
        if failure is not None:
            problems.append(failure)
            continue
        try:
            gates = parse_gates(rule)
        except GateError as exc:
            problems.append(problem(rule_file, at + list(exc.path), "invalid",
                                    f"{_dotted(at + list(exc.path))}: {exc}", exc.hint, rule=rule["id"]))
            continue
        line, _ = rule_file.locate(at)
        fields = {k: (tuple(v) if k in ("during", "outside") else v) for k, v in rule.items()}
        rules.append(Guardrail(**fields, source=str(rule_file.path), line=line, gates=gates))
    return rules


def _check_rule(rule: Mapping[str, Any], rule_file: RuleFile, at: list) -> RulesError | None:
    rule_id = rule["id"]
    if rule_id.startswith(RESERVED_PREFIXES):
        return problem(rule_file, at + ["id"], "reserved_id", f"rule id {rule_id!r} is reserved",
                       f"ids starting with {' or '.join(RESERVED_PREFIXES)} name the guard's built-in checks",
                       rule=rule_id)
    if "approver_role" in rule and rule["outcome"] != "require_approval":
        return problem(rule_file, at + ["approver_role"], "invalid",
                       f"{_dotted(at)}: approver_role goes only with outcome: require_approval", rule=rule_id)
    match = rule.get("match") or {}
    for path in _fields(match, ["match"]):
        field = path[-1]  # YAML keys may be numbers or null
        if not isinstance(field, str) or field not in CONTEXT_FIELDS and not field.startswith(CONTEXT_PREFIXES):
            known = ", ".join(sorted(CONTEXT_FIELDS))
            return problem(rule_file, at + path, "unknown_field", f"{_dotted(at + path)}: unknown field {field!r}",
                           f"a guardrail can match {known}, params.<name>, target_labels.<name>", rule=rule_id)
    for key in ("match", "state"):
        condition = rule.get(key)
        if condition is None:
            continue
        branches = condition_branches(condition)
        if branches > MAX_BRANCHES:
            return problem(rule_file, at + [key], "invalid",
                           f"{_dotted(at)}.{key} has {branches} alternatives, over {MAX_BRANCHES}",
                           "split the rule, or shorten its 'in' lists and 'any' branches", rule=rule_id)
        try:
            compile_condition(condition, {}, key)
        except ConditionError as exc:
            path = at + [key] + _condition_path(condition, exc.path.removeprefix(key))
            return problem(rule_file, path, "invalid", f"{_dotted(at)}.{exc.path}: {exc.reason}", rule=rule_id)
    return None


def _fields(condition: Mapping[str, Any], path: list) -> Iterator[list]:
    for key, value in condition.items():
        if key in ("all", "any"):
            for index, nested in enumerate(value):
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


def _schema_problem(rule_file: RuleFile, error) -> RulesError:
    """One schema error as a RuleProblem at the offending key, in words a rule author can act on."""
    path = list(error.absolute_path)
    where = _dotted(path)
    rule = _rule_id(rule_file.doc, path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = next(k for k in error.instance if k not in allowed)
        return problem(rule_file, path + [extra], "unknown_field", f"{where}: unknown field {extra!r}",
                       f"allowed here: {', '.join(allowed)}", rule=rule)
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        # propertyNames errors carry the bad key as the instance but the enclosing object's path
        return problem(rule_file, path + [error.instance], "unknown_field",
                       f"{where}: unknown operator {error.instance!r}",
                       f"use one of {', '.join(error.validator_value)}", rule=rule)
    if "dependentSchemas" in error.schema_path:
        return problem(rule_file, path[:-1] + ["approver_role"], "invalid",
                       f"{_dotted(path[:-1])}: approver_role goes only with outcome: require_approval", rule=rule)
    message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, list) and "match" in path:
        hint = "to match any of several values, write {in: [...]}"
    elif error.validator == "type" and path and path[-1] in ("from", "to") and isinstance(error.instance, int):
        hint = f"quote times of day: '22:00' (YAML reads an unquoted 22:00 as the number {22 * 60})"
    elif error.validator == "anyOf" and error.schema.get("description"):
        message, hint = f"{error.instance!r} is not valid here", f"expected {error.schema['description']}"
    return problem(rule_file, path, "invalid", f"{where}: {message}", hint, rule=rule)


def _rule_id(doc: Any, path: list) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(doc, Mapping):
        rules = doc.get("rules")
        if isinstance(rules, list) and isinstance(path[1], int) and path[1] < len(rules):
            rule = rules[path[1]]
            if isinstance(rule, Mapping) and isinstance(rule.get("id"), str):
                return rule["id"]
    return None


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


@lru_cache(maxsize=1)
def _schema_doc() -> dict[str, Any]:
    return json.loads((resources.files("rules") / "schemas" / "guardrails.v1.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def _schema() -> Draft202012Validator:
    return Draft202012Validator(_schema_doc())


@lru_cache(maxsize=1)
def _fast_schema():
    # fastjsonschema compiles the schema to Python: ~50x faster on a valid file than jsonschema, which
    # matters for a pre-commit hook over large rule sets. It skips `dependentSchemas` (2019-09+), which
    # _check_rule repeats; on any failure jsonschema re-validates for the located, worded errors.
    return fastjsonschema.compile(_schema_doc())


def read_fast(path: str | Path) -> RuleFile:
    """read_rule_file with libyaml when it is there (10x faster on large files); the pure-Python reader
    runs again on a syntax error, so error messages and positions are the same either way."""
    loader = getattr(yaml, "CSafeLoader", None)
    path = Path(path)
    if loader is None:
        return read_rule_file(path)
    try:
        text = path.read_text("utf-8")
        node = yaml.compose(text, Loader=loader)
        if node is None:
            return read_rule_file(path)
        marks = node_marks(node, path)
        constructor = loader(text)
        try:
            doc = constructor.construct_document(node)
        finally:
            constructor.dispose()
        if "<<" in text:  # as in read_rule_file: merged keys are in the nodes now
            marks = node_marks(node, path)
    except RulesError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError):
        return read_rule_file(path)
    return RuleFile(path, text, doc, marks)


def guardrail_paths(source: str | Path | Iterable[str | Path] | None = None) -> list[Path]:
    """The files load_guardrails would read, in evaluation order."""
    return _paths(source)


def _paths(source: str | Path | Iterable[str | Path] | None) -> list[Path]:
    if source is None:
        source = Path(str(resources.files("rules") / "guardrails"))
    found: list[Path] = []
    for item in [source] if isinstance(source, str | Path) else source:
        path = Path(item)
        if path.is_dir():
            inside = [f for f in path.iterdir() if f.suffix in (".yaml", ".yml") and not _is_test(f)]
            if not inside:
                raise RulesError(path, 1, 1, "no guardrail files (*.yaml, *.yml) in this directory")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise RulesError(path, 1, 1, "no such file or directory")
    return sorted(found, key=lambda f: (f.name, str(f)))


def _is_test(path: Path) -> bool:
    return path.name.endswith((TEST_SUFFIX, ".test.yml"))


def _dotted(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"
