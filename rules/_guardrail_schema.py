"""Guardrail files against their JSON Schema (`schemas/guardrails.v1.json`), and every way a file can break
it said at the offending key, in words a rule author can act on (`RuleProblem`: a RulesError with a kind,
so `rules check` can group and explain it). rules/_guardrails.py reads the files and builds the rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

from rules._files import RuleFile, RulesError
from rules._schema_errors import did_you_mean, key_of, misspelt_required, missing_key, unknown_key_hint


class RuleProblem(RulesError):
    """A RulesError with a kind, so `rules check` can group and explain it (unknown_field,
    duplicate_id, unknown_action, never_matches, shadowed, …)."""

    def __init__(self, file: str | Path, line: int, column: int, reason: str, hint: str = "",
                 kind: str = "invalid", rule: str | None = None, key: str | None = None):
        super().__init__(file, line, column, reason, hint, key)
        self.kind = kind
        self.rule = rule
        self.where: tuple = ()  # the path in the document, when known

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kind": self.kind, "rule": self.rule}


def problem(rule_file: RuleFile, path: Iterable[str | int], kind: str, reason: str, hint: str = "",
            rule: str | None = None) -> RuleProblem:
    path = list(path)
    line, column = rule_file.locate(path)
    found = RuleProblem(rule_file.path, line, column, reason, hint, kind, rule, key_of(path))
    found.where = tuple(path)
    return found


def schema_problems(rule_file: RuleFile, errors: list) -> list[RuleProblem]:
    """Every schema error as a RuleProblem at the offending key, in words a rule author can act on.
    Each problem's `where` is its path in the document (to group them by rule)."""
    typos = misspelt_required(errors)
    found = []
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            path = list(error.absolute_path)
            properties = list(error.schema.get("properties", {}))
            required = [r for r in error.schema.get("required", []) if r not in error.instance]
            for extra in [k for k in error.instance if k not in properties]:
                found.append(located(problem(rule_file, path + [extra], "unknown_field",
                                              f"{dotted_path(path)}: unknown field {extra!r}",
                                              unknown_key_hint(extra, properties, required),
                                              rule=rule_id_at(rule_file.doc, path)), path + [extra]))
            continue
        if error.validator == "required" and isinstance(error.instance, Mapping):
            name = missing_key(error)
            if (tuple(error.absolute_path), name) in typos:
                continue  # reported at the typo: "unknown field 'outcom' (did you mean 'outcome'?)"
        found.append(schema_problem(rule_file, error))
    return found


def located(found: RuleProblem, where: list) -> RuleProblem:
    found.where = tuple(where)
    return found


def schema_problem(rule_file: RuleFile, error) -> RuleProblem:
    """One schema error (not an unknown key) as a RuleProblem at the offending key."""
    path = list(error.absolute_path)
    where = dotted_path(path)
    rule = rule_id_at(rule_file.doc, path)
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        # propertyNames errors carry the bad key as the instance but the enclosing object's path
        guess = did_you_mean(error.instance, error.validator_value)
        hint = f"use one of {', '.join(error.validator_value)}"
        return located(problem(rule_file, path + [error.instance], "unknown_field",
                                f"{where}: unknown operator {error.instance!r}",
                                f"did you mean {guess!r}? {hint}" if guess else hint, rule=rule),
                        path + [error.instance])
    if "dependentSchemas" in error.schema_path:
        return located(problem(rule_file, path[:-1] + ["approver_role"], "invalid",
                                f"{dotted_path(path[:-1])}: approver_role goes only with outcome: require_approval",
                                "remove approver_role, or set outcome: require_approval", rule=rule),
                        path[:-1] + ["approver_role"])
    message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, list) and "match" in path:
        hint = "to match any of several values, write {in: [...]}"
    elif error.validator == "type" and path and path[-1] in ("from", "to") and isinstance(error.instance, int):
        hours, minutes = divmod(error.instance, 60)
        message = f"{error.instance} is not a time of day"
        hint = (f"quote times of day: '{hours:02d}:{minutes:02d}' (YAML reads an unquoted {hours}:{minutes:02d} "
                f"as the number {error.instance}, in minutes)")
    elif error.validator == "required":
        name = missing_key(error) or ""
        hint = f"add {name}: to this rule" if len(path) == 2 else f"add {name}: here"
    elif error.validator == "enum" and isinstance(error.instance, str):
        guess = did_you_mean(error.instance, error.validator_value)
        message = f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
        hint = f"did you mean {guess!r}?" if guess else ""
    elif error.validator == "anyOf" and error.schema.get("description"):
        message, hint = f"{error.instance!r} is not valid here", f"expected {error.schema['description']}"
    found = located(problem(rule_file, path, "invalid", f"{where}: {message}", hint, rule=rule), path)
    if error.validator == "required":
        found.key = name  # the key that is missing, at the mapping that lacks it
    return found


def rule_id_at(doc: Any, path: list) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(doc, Mapping):
        rules = doc.get("rules")
        if isinstance(rules, list) and isinstance(path[1], int) and path[1] < len(rules):
            rule = rules[path[1]]
            if isinstance(rule, Mapping) and isinstance(rule.get("id"), str):
                return rule["id"]
    return None


@lru_cache(maxsize=1)
def schema_doc() -> dict[str, Any]:
    return json.loads((resources.files("rules") / "schemas" / "guardrails.v1.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    return Draft202012Validator(schema_doc())


@lru_cache(maxsize=1)
def fast_validator():
    # fastjsonschema compiles the schema to Python: ~50x faster on a valid file than jsonschema, which
    # matters for a pre-commit hook over large rule sets. It skips `dependentSchemas` (2019-09+), which
    # _rule_problems repeats; on any failure jsonschema re-validates for the located, worded errors.
    return fastjsonschema.compile(schema_doc())


def dotted_path(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"
