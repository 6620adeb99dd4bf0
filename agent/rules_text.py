"""Guardrail files as text: edits that keep the author's comments and layout, and the check a changed
file must pass, in memory.

`narrow` adds `any` alternatives to one rule's `match`, `append_rule` adds a rule after a file's last
one; both work on the YAML nodes' positions, so everything else in the file stays byte for byte.
`check_texts` is `rtem rules check` for guardrail texts that are not written anywhere: the same parser
and schema, duplicate ids, the same analysis and the compile. `rtem rules suggest` uses them
(agent/rules_suggest.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rules import ActionContract, ConditionError, Guard, Ruleset, parse_guardrails
from rules._analysis import analyze
from rules._files import RuleFile, RulesError, node_marks, syntax_error


def check_texts(files: Mapping[str, str], contracts: Mapping[str, ActionContract], now: datetime) -> list[str]:
    """The errors `rtem rules check` would report for these guardrail files (schema, duplicate ids, the
    analysis, the compile), without writing them anywhere."""
    errors: list[str] = []
    rules, seen = [], set()
    for name, text in files.items():
        problems: list[RulesError] = []
        try:
            parsed = parse_guardrails(_rule_file(name, text), problems)
        except RulesError as exc:
            problems.append(exc)
            parsed = []
        errors.extend(str(p) for p in problems)
        for rule in parsed:
            if rule.id in seen:
                errors.append(f"{name}:{rule.line}: duplicate rule id {rule.id!r}")
            seen.add(rule.id)
            rules.append(rule)
    errors.extend(f"{f.rule.source}:{f.rule.line}: rule {f.rule.id!r} {f.message}"
                  for f in analyze(rules, contracts, now) if f.severity == "error")
    if not errors:
        try:
            Guard(Ruleset(rules=tuple(rules), digest="suggest"), contracts).close()  # compiled as the check does
        except (ConditionError, RuntimeError) as exc:
            errors.append(f"the guardrails do not compile: {exc}")
    return errors


# -- edits ------------------------------------------------------------------------------------------

class CannotEdit(ValueError):
    pass


def rules_in(files: Mapping[str, str]) -> dict[str, tuple[str, int, Any]]:
    """rule id → (file, index in its `rules` list, Guardrail), for the files that parse."""
    found: dict[str, tuple[str, int, Any]] = {}
    for name, text in files.items():
        try:
            rule_file = _rule_file(name, text)
            rules = parse_guardrails(rule_file, [])
        except RulesError:
            continue
        listed = rule_file.doc.get("rules") if isinstance(rule_file.doc, Mapping) else None
        lines = [rule_file.locate(["rules", i])[0] for i in range(len(listed) if isinstance(listed, list) else 0)]
        for rule in rules:
            found.setdefault(rule.id, (name, lines.index(rule.line), rule))
    return found


def _rule_file(name: str, text: str) -> RuleFile:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:  # at its place, with a hint, as `rules check` reports it
        raise syntax_error(name, text, exc) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a scalar PyYAML cannot build (+24:00)
        raise RulesError(name, 1, 1, f"YAML: {exc}") from None
    return RuleFile(Path(name), text, doc, node_marks(node, name) if node is not None else {(): (1, 1)})


def excludes(match: Mapping[str, Any], exclusion: list[dict[str, Any]]) -> bool:
    """Whether `narrow` already added `exclusion` to `match`."""
    return match.get("any") == exclusion or {"any": exclusion} in (match.get("all") or [])


def narrow(text: str, index: int, exclude: Callable[[Mapping[str, Any]], list[dict[str, Any]]], note: str) -> str:
    """The rule at `index` with `exclude(match)` (`any` alternatives) added to its `match`, `note` as a
    comment above it; the rest of the file unchanged."""
    item, doc_rule = _item(text, index)
    match = dict(doc_rule.get("match") or {})
    exclusion = exclude(match)
    if "any" in match:  # keep its alternatives; the exclusion is one more condition beside them
        match["all"] = [*(match.get("all") or []), {"any": exclusion}]
    else:
        match["any"] = exclusion
    lines = text.splitlines(keepends=True)
    pairs = {key.value: (key, value) for key, value in item.value if isinstance(key, yaml.ScalarNode)}
    if "match" in pairs:
        key, value = pairs["match"]
        first, (last, end) = key.start_mark.line, _content_end(value, lines)
        rest = lines[last][end:].rstrip("\n")
        if rest.strip() and not rest.strip().startswith("#"):
            raise CannotEdit("something follows its match on the same line")
        column = key.start_mark.column
        block = _block("match", match, column, lines[first][:column], note)
        if rest.strip():
            block[-1] = block[-1].rstrip("\n") + rest + "\n"
        return "".join(lines[:first] + block + lines[last + 1:])
    key, value = pairs["id"]
    line, _ = _content_end(value, lines)
    return "".join(lines[:line + 1] + _block("match", match, key.start_mark.column, None, note) + lines[line + 1:])


def append_rule(text: str, rule: dict[str, Any]) -> str:
    """`text` with `rule` added after the file's last rule."""
    lines = text.splitlines(keepends=True)
    rules = _rules_node(text)
    if not rules.value:
        raise CannotEdit("its rules list is empty; add the rule by hand")
    first, last = rules.value[0], rules.value[-1]
    dash = lines[first.start_mark.line].rfind("-", 0, first.start_mark.column)
    if dash < 0:
        raise CannotEdit("its rules are not a block list")
    line, _ = _content_end(last, lines)
    body = yaml.safe_dump(rule, sort_keys=False, default_flow_style=None, width=10_000, allow_unicode=True)
    rendered = [" " * dash + ("- " if i == 0 else "  ") + row + "\n" for i, row in enumerate(body.splitlines())]
    if not lines[line].endswith("\n"):
        lines[line] += "\n"
    return "".join(lines[:line + 1] + ["\n"] + rendered + lines[line + 1:])


def _rules_node(text: str) -> yaml.SequenceNode:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    rules = next((v for k, v in (root.value if isinstance(root, yaml.MappingNode) else [])
                  if getattr(k, "value", None) == "rules"), None)
    if not isinstance(rules, yaml.SequenceNode) or rules.flow_style:
        raise CannotEdit("its rules are not a block list")
    return rules


def _item(text: str, index: int) -> tuple[yaml.MappingNode, dict[str, Any]]:
    item = _rules_node(text).value[index]
    if not isinstance(item, yaml.MappingNode) or item.flow_style:
        raise CannotEdit("the rule is written in flow style ({...})")
    return item, yaml.safe_load(text)["rules"][index]


def _content_end(node: yaml.Node, lines: list[str]) -> tuple[int, int]:
    """(line, column) just after the last character of `node`'s own text: a block collection's end mark
    lies past the comments and blank lines after it, so follow its last child instead."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        return _content_end(last[1] if isinstance(last, tuple) else last, lines)
    line, column = node.end_mark.line, node.end_mark.column
    if column == 0 and line > node.start_mark.line:  # a block scalar ends at the start of the next line
        line -= 1
        column = len(lines[line].rstrip("\n"))
    return line, column


def _block(key: str, value: Any, column: int, prefix: str | None, note: str) -> list[str]:
    body = yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=10_000, allow_unicode=True)
    head = (prefix if prefix is not None else " " * column) + f"{key}:\n"
    return [" " * column + f"# {note}\n", head, *(" " * (column + 2) + row + "\n" for row in body.splitlines())]


def unified_diff(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """One unified diff of every file whose text changed, with paths a/NAME and b/NAME (patch -p1)."""
    return "".join("".join(difflib.unified_diff(before[n].splitlines(keepends=True), after[n].splitlines(keepends=True),
                                                f"a/{n}", f"b/{n}")) for n in before if before[n] != after[n])
