"""Guardrail files: read, validate and turn into a `Ruleset` the guard can compile.

A guardrail file is YAML (`version: 1`, then `rules:`), checked against `schemas/guardrails.v1.json`.
Mistakes are refused at load time, never at evaluation time, and every refusal names the file, line
and column of the offending key (reading and positions come from `_files`, shared with detection). A
guardrail that silently never matches is worse than none, which is also why a condition may only name
fields the guard's context fact has (CONTEXT_FIELDS).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict

from rules._engine import MAX_BRANCHES, ConditionError, compile_condition, condition_branches
from rules._files import RuleFile, RulesError, content_digest, read_rule_file
from rules._proposal import Outcome

SUPPORTED_VERSION = 1
RESERVED_PREFIXES = ("contract.", "guard.")  # the guard's built-in checks use these ids
# What a guardrail condition may name; rules/_guard.py (context_fact) documents each field.
CONTEXT_FIELDS = frozenset({
    "action", "risk", "proposed_by", "cause",
    "target", "target_type", "target_tier", "target_service", "target_labels",
    "incident_id", "incident_severity", "in_blast_radius",
    "hour", "minute", "weekday", "date", "params",
})
CONTEXT_PREFIXES = ("params.", "target_labels.")


class Guardrail(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    description: str = ""
    match: dict[str, Any]
    outcome: Outcome
    approver_role: str | None = None
    reason: str
    source: str
    line: int


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
    """
    files = [read_rule_file(path) for path in _paths(source)]
    rules: list[Guardrail] = []
    seen: dict[str, Guardrail] = {}
    for rule_file in files:
        for index, rule in enumerate(parse_guardrails(rule_file)):
            if rule.id in seen:
                first = seen[rule.id]
                raise rule_file.error(["rules", index, "id"], f"duplicate rule id {rule.id!r}",
                                      f"first defined at {first.source}:{first.line}; ids are unique across files")
            seen[rule.id] = rule
            rules.append(rule)
    return Ruleset(rules=tuple(rules), digest=content_digest(files), sources=tuple(str(f.path) for f in files))


def parse_guardrails(rule_file: RuleFile) -> list[Guardrail]:
    """The rules of one guardrail file; RulesError points at the offending line."""
    doc = rule_file.doc
    if not isinstance(doc, Mapping):
        raise rule_file.error([], f"a guardrail file is a mapping starting with 'version: {SUPPORTED_VERSION}'")
    if "version" not in doc:
        raise rule_file.error([], f"the file must start with 'version: {SUPPORTED_VERSION}'")
    if doc["version"] != SUPPORTED_VERSION:
        raise rule_file.error(["version"], f"version {doc['version']!r} is not supported",
                              f"this rtem reads version {SUPPORTED_VERSION}")
    problems = [_schema_problem(rule_file, e) for e in _schema().iter_errors(doc)]
    if problems:
        raise min(problems, key=lambda p: (p.line, p.column))
    rules = []
    for index, rule in enumerate(doc["rules"]):
        _check_rule(rule, rule_file, ["rules", index])
        line, _ = rule_file.locate(["rules", index])
        rules.append(Guardrail(**rule, source=str(rule_file.path), line=line))
    return rules


def _check_rule(rule: Mapping[str, Any], rule_file: RuleFile, at: list) -> None:
    if rule["id"].startswith(RESERVED_PREFIXES):
        raise rule_file.error(at + ["id"], f"rule id {rule['id']!r} is reserved",
                              f"ids starting with {' or '.join(RESERVED_PREFIXES)} name the guard's built-in checks")
    for path in _fields(rule["match"], ["match"]):
        field = path[-1]
        if field not in CONTEXT_FIELDS and not field.startswith(CONTEXT_PREFIXES):
            known = ", ".join(sorted(CONTEXT_FIELDS))
            raise rule_file.error(at + path, f"{_dotted(at + path)}: unknown field {field!r}",
                                  f"a guardrail can match {known}, params.<name>, target_labels.<name>")
    branches = condition_branches(rule["match"])
    if branches > MAX_BRANCHES:
        raise rule_file.error(at + ["match"], f"{_dotted(at)}.match has {branches} alternatives, over {MAX_BRANCHES}",
                              "split the rule, or shorten its 'in' lists and 'any' branches")
    try:
        compile_condition(rule["match"], {}, "match")
    except ConditionError as exc:
        path = at + ["match"] + _condition_path(rule["match"], exc.path.removeprefix("match"))
        raise rule_file.error(path, f"{_dotted(at)}.{exc.path}: {exc.reason}") from None



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
    """One schema error as a RulesError at the offending key, in words a rule author can act on."""
    path = list(error.absolute_path)
    where = _dotted(path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = next(k for k in error.instance if k not in allowed)
        return rule_file.error(path + [extra], f"{where}: unknown field {extra!r}",
                               f"allowed here: {', '.join(allowed)}")
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        # propertyNames errors carry the bad key as the instance but the enclosing object's path
        return rule_file.error(path + [error.instance], f"{where}: unknown operator {error.instance!r}",
                               f"use one of {', '.join(error.validator_value)}")
    if "dependentSchemas" in error.schema_path:
        return rule_file.error(path[:-1] + ["approver_role"],
                               f"{_dotted(path[:-1])}: approver_role goes only with outcome: require_approval")
    message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, list) and "match" in path:
        hint = "to match any of several values, write {in: [...]}"
    return rule_file.error(path, f"{where}: {message}", hint)


@lru_cache(maxsize=1)
def _schema() -> Draft202012Validator:
    text = (resources.files("rules") / "schemas" / "guardrails.v1.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def _paths(source: str | Path | Iterable[str | Path] | None) -> list[Path]:
    if source is None:
        source = Path(str(resources.files("rules") / "guardrails"))
    found: list[Path] = []
    for item in [source] if isinstance(source, str | Path) else source:
        path = Path(item)
        if path.is_dir():
            inside = [f for f in path.iterdir() if f.suffix in (".yaml", ".yml")]
            if not inside:
                raise RulesError(path, 1, 1, "no guardrail files (*.yaml, *.yml) in this directory")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise RulesError(path, 1, 1, "no such file or directory")
    return sorted(found, key=lambda f: (f.name, str(f)))


def _dotted(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"
