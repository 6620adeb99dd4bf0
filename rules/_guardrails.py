"""Guardrail files: read, validate and turn into a `Ruleset` the guard can compile.

A guardrail file is YAML (`version: 1`, then `rules:`), checked against `schemas/guardrails.v1.json`.
Mistakes are refused at load time, never at evaluation time, and every refusal names the file, line
and column of the offending key: a guardrail that silently never matches is worse than none, which is
also why a condition may only name fields the guard's context fact has (CONTEXT_FIELDS).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict

from rules._engine import ConditionError, compile_condition
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


class RulesError(ValueError):
    """A rule file rtem refuses. `line` and `column` are 1-based; None when the whole file is at fault."""

    def __init__(self, file: str, line: int | None, column: int | None, reason: str):
        where = ":".join(str(p) for p in (file, line, column) if p is not None)
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason


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
    the packaged `rules/guardrails/`. Files are read in name order; `digest` is a sha256 over each file's
    name and bytes in that order, so the same files give the same digest wherever they are installed.
    """
    files = _files(source)
    digest = hashlib.sha256()
    rules: list[Guardrail] = []
    seen: dict[str, Guardrail] = {}
    for path, data in files:
        digest.update(f"{Path(str(path)).name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        for rule in parse_guardrails(data, str(path)):
            if rule.id in seen:
                first = seen[rule.id]
                raise RulesError(rule.source, rule.line, 1, f"duplicate rule id {rule.id!r}; first defined at {first.source}:{first.line}")
            seen[rule.id] = rule
            rules.append(rule)
    return Ruleset(rules=tuple(rules), digest=digest.hexdigest(), sources=tuple(str(p) for p, _ in files))


def parse_guardrails(data: bytes | str, source: str = "<guardrails>") -> list[Guardrail]:
    """The rules of one guardrail file's content; RulesError points at the offending line."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RulesError(source, None, None, f"not UTF-8 text (byte {exc.start})") from None
    root, doc = _compose(text, source)
    if not isinstance(doc, Mapping):
        raise RulesError(source, 1, 1, f"a guardrail file is a mapping starting with 'version: {SUPPORTED_VERSION}'")
    if doc.get("version") != SUPPORTED_VERSION:
        node = _locate(root, ["version"])
        if "version" not in doc:
            raise RulesError(source, 1, 1, f"the file must start with 'version: {SUPPORTED_VERSION}'")
        raise RulesError(source, *_mark(node), f"version {doc['version']!r} is not supported; this rtem reads 'version: {SUPPORTED_VERSION}'")
    errors = [_schema_problem(root, e) for e in _schema().iter_errors(doc)]
    if errors:
        raise RulesError(source, *min(errors))
    rules = []
    for index, rule in enumerate(doc["rules"]):
        rule_node = _locate(root, ["rules", index])
        _check_rule(rule, rule_node, source, f"rules[{index}]")
        rules.append(Guardrail(**rule, source=source, line=_mark(rule_node)[0]))
    return rules


def _check_rule(rule: Mapping[str, Any], node: yaml.Node, source: str, where: str) -> None:
    if rule["id"].startswith(RESERVED_PREFIXES):
        raise RulesError(source, *_mark(_locate(node, ["id"])), f"rule ids starting with {' or '.join(RESERVED_PREFIXES)} are reserved for the guard's built-in checks")
    for path, field in _fields(rule["match"], ["match"]):
        if field not in CONTEXT_FIELDS and not field.startswith(CONTEXT_PREFIXES):
            raise RulesError(source, *_mark(_locate(node, path, key=True)),
                             f"{where}.{_dotted(path)}: unknown field {field!r}; a guardrail can match {', '.join(sorted(CONTEXT_FIELDS))}, params.<name>, target_labels.<name>")
    try:
        compile_condition(rule["match"], {}, "match")
    except ConditionError as exc:
        raise RulesError(source, *_mark(_locate_dotted(node, exc.path)), f"{where}.{exc.path}: {exc.reason}") from None


def _fields(condition: Mapping[str, Any], path: list) -> Iterator[tuple[list, str]]:
    for key, value in condition.items():
        if key in ("all", "any"):
            for index, nested in enumerate(value):
                yield from _fields(nested, path + [key, index])
        else:
            yield path + [key], key


def _schema_problem(root: yaml.Node, error) -> tuple[int, int, str]:
    """(line, column, reason) for one schema error, pointing at the offending key where there is one."""
    path = list(error.absolute_path)
    where = _dotted(path)
    if error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        extra = next(k for k in error.instance if k not in allowed)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return (*_mark(_locate(root, path + [extra], key=True)), f"{where}: unknown field {extra!r}{hint}")
    if error.validator == "enum" and error.relative_schema_path and "propertyNames" in error.relative_schema_path:
        # propertyNames errors carry the bad key as the instance but the object's path
        return (*_mark(_locate(root, path + [error.instance], key=True)),
                f"{where}: unknown operator {error.instance!r}; use one of {', '.join(error.validator_value)}")
    if "dependentSchemas" in error.schema_path:
        return (*_mark(_locate(root, path[:-1] + ["approver_role"], key=True)),
                f"{_dotted(path[:-1])}: approver_role goes only with outcome: require_approval")
    message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    if error.validator == "type" and isinstance(error.instance, list) and "match" in path:
        message += "; to match any of several values, write {in: [...]}"
    return (*_mark(_locate(root, path)), f"{where}: {message}")


@lru_cache(maxsize=1)
def _schema() -> Draft202012Validator:
    text = (resources.files("rules") / "schemas" / "guardrails.v1.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


# -- files -------------------------------------------------------------------------------------------

def _files(source: str | Path | Iterable[str | Path] | None) -> list[tuple[Traversable | Path, bytes]]:
    if source is None:
        root = resources.files("rules") / "guardrails"
        found: list[Traversable | Path] = [f for f in root.iterdir() if _is_rule_file(f.name)]
    else:
        found = []
        for item in [source] if isinstance(source, str | Path) else source:
            path = Path(item)
            if path.is_dir():
                inside = [f for f in path.iterdir() if _is_rule_file(f.name)]
                if not inside:
                    raise RulesError(str(path), None, None, "no guardrail files (*.yaml, *.yml) in this directory")
                found.extend(inside)
            elif path.is_file():
                found.append(path)
            else:
                raise RulesError(str(path), None, None, "no such file or directory")
    found.sort(key=lambda f: (f.name, str(f)))
    return [(f, f.read_bytes()) for f in found]


def _is_rule_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


# -- YAML with positions -----------------------------------------------------------------------------

# libyaml when present: PyYAML's pure-Python parser takes ~1 s for a 1,000-rule file.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML keeping the node tree, so errors can name lines. Duplicate keys are errors: PyYAML
    would silently keep the last one, and a guardrail with two `match:` keys means one is ignored."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _no_duplicate_keys(root, source)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise RulesError(source, mark.line + 1 if mark else None, mark.column + 1 if mark else None, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise RulesError(source, None, None, f"YAML error: {exc}") from None
    finally:
        loader.dispose()


def _no_duplicate_keys(node: yaml.Node, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise RulesError(source, *_mark(key), f"duplicate key {key.value!r}")
                seen.add(key.value)
            _no_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _no_duplicate_keys(item, source)


def _locate(node: yaml.Node | None, path: list, key: bool = False) -> yaml.Node | None:
    """The node at `path` (keys and indexes), or with key=True the key node of its last step. Stops at
    the deepest node that exists, so a missing key still points somewhere near."""
    for step, part in enumerate(path):
        last = step == len(path) - 1
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if pair is None:
                return node
            node = pair[0] if (key and last) else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _locate_dotted(rule_node: yaml.Node, dotted: str) -> yaml.Node | None:
    """Follow a ConditionError path (`match.all[0].params.replicas.gt`) whose field names may contain dots."""
    node, rest = rule_node, dotted
    while rest and isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        if isinstance(node, yaml.SequenceNode):
            found = re.match(r"\[(\d+)\]\.?", rest)
            if not found or int(found[1]) >= len(node.value):
                break
            node, rest = node.value[int(found[1])], rest[found.end():]
            continue
        keys = sorted((k for k, _ in node.value if isinstance(k, yaml.ScalarNode)), key=lambda k: -len(k.value))
        step = next((k for k in keys if rest == k.value or rest.startswith((k.value + ".", k.value + "["))), None)
        if step is None:
            break
        rest = rest[len(step.value):].removeprefix(".")
        node = step if not rest else next(v for k, v in node.value if k is step)
    return node


def _mark(node: yaml.Node | None) -> tuple[int, int]:
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _dotted(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"
