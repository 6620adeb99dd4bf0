"""Shadowed guardrails: rule R is shadowed by deny rule D when every alternative of R implies some
alternative of D (and D has no gates): whenever R matches, D denies, so R's own outcome can never decide
a verdict. Part of the static analysis (`rules._analysis`), sound in the same direction: when unsure, a
rule is not shadowed."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from rules._contracts import ActionContract
from rules._guardrails import Guardrail
from rules._rule_shapes import NUMERIC_OPS, Alternative, Constraint, Finding, Term


def shadowed(rules: list[Guardrail], shapes: dict[str, list[Alternative]],
              contracts: Mapping[str, ActionContract]) -> Iterator[Finding]:
    order = {rule.id: i for i, rule in enumerate(rules)}
    indexes = {outcome: _Index([r for r in rules if r.outcome == outcome and not r.gates and r.id in shapes], shapes)
               for outcome in ("deny", "require_approval")}
    for rule in rules:
        alternatives = shapes.get(rule.id)
        if not alternatives or rule.outcome == "deny":
            continue
        if all(_false(a, "in_blast_radius") for a in alternatives):
            yield Finding("shadowed", rule, ("match", "in_blast_radius"),
                          "is shadowed: the built-in check guard.blast_radius denies every proposal it matches "
                          "(in_blast_radius: false), so its outcome never decides a verdict", "remove the rule")
            continue
        cover = indexes["deny"].cover(rule, alternatives)
        if cover is not None:
            when = "an earlier" if order[cover.id] < order[rule.id] else "a later"
            yield Finding("shadowed", rule, ("outcome",),
                          f"is shadowed: {when} deny rule {cover.id!r} ({cover.source}:{cover.line}) matches every "
                          f"proposal it matches, so its outcome never decides a verdict",
                          "remove this rule, narrow the deny rule, or tell them apart in `match`")
            continue
        if rule.outcome != "allow":
            continue
        cover = indexes["require_approval"].cover(rule, alternatives)
        if cover is not None:
            yield Finding("shadowed", rule, ("outcome",),
                          f"can never allow anything: require_approval rule {cover.id!r} "
                          f"({cover.source}:{cover.line}) matches every proposal it matches",
                          "remove this rule or narrow the approval rule", severity="warning")
            continue
        actions = _actions_of(alternatives)
        if actions and all(a in contracts and contracts[a].needs_approval for a in actions):
            yield Finding("shadowed", rule, ("outcome",),
                          f"can never allow anything: the contract of {', '.join(sorted(actions))} requires approval "
                          "(built-in check contract.approval)", "remove the rule", severity="warning")


def _false(alternative: Alternative, name: str) -> bool:
    c = alternative.fields.get(name)
    return c is not None and c.allowed == {False}


def _actions_of(alternatives: list[Alternative]) -> set | None:
    found: set = set()
    for alternative in alternatives:
        c = alternative.fields.get("action")
        if c is None or c.allowed is None:
            return None
        found |= c.allowed
    return found


class _Index:
    """The alternatives of shadowing candidates, indexed by one (field, value) each must see."""

    def __init__(self, rules: list[Guardrail], shapes: dict[str, list[Alternative]]):
        self.keyed: dict[tuple[str, Any], list[tuple[Guardrail, Alternative]]] = defaultdict(list)
        self.unkeyed: list[tuple[Guardrail, Alternative]] = []
        for rule in rules:
            for alternative in shapes[rule.id]:
                finite = [(name, c) for name, c in alternative.fields.items() if c.allowed is not None
                          and any(t.field == name and t.op in ("eq", "in") for t in alternative.terms)]
                if not finite:
                    self.unkeyed.append((rule, alternative))
                    continue
                name, c = min(finite, key=lambda item: len(item[1].allowed))
                for value in c.allowed:
                    self.keyed[(name, _key(value))].append((rule, alternative))

    def cover(self, rule: Guardrail, alternatives: list[Alternative]) -> Guardrail | None:
        """A rule that matches whenever `rule` does (every alternative covered by one of its alternatives)."""
        first = None
        for alternative in alternatives:
            candidates = list(self.unkeyed)
            for name, c in alternative.fields.items():
                if c.allowed:
                    candidates.extend(self.keyed.get((name, _key(next(iter(c.allowed)))), ()))
            found = next((other for other, theirs in candidates
                          if other.id != rule.id and _implies(alternative, theirs)), None)
            if found is None:
                return None
            first = first or found
        return first


def _key(value: Any) -> Any:
    return ("b", value) if isinstance(value, bool) else value


def _implies(mine: Alternative, theirs: Alternative) -> bool:
    """Every fact satisfying `mine` satisfies `theirs`."""
    for term in theirs.terms:
        c = mine.fields.get(term.field)
        if term.op == "exists" and term.value is False:
            if c is None or not c.absent:
                return False
            continue
        if c is None or not c.present:
            return False
        if not _term_holds(c, term):
            return False
    return True


def _term_holds(c: Constraint, term: Term) -> bool:
    op, value = term.op, term.value
    if op == "exists":
        return True
    values = c.allowed
    if op == "eq":
        return values is not None and values <= {value}
    if op == "in":
        return values is not None and values <= set(value)
    if op in ("ne", "not_in"):
        banned = [value] if op == "ne" else value
        return all((values is not None and v not in values) or v in c.excluded
                   or (isinstance(v, int | float) and c.numeric() and not c.in_interval(v)) for v in banned)
    if op in NUMERIC_OPS:
        check = Constraint()
        if op in ("gt", "gte"):
            check.lo, check.lo_open = value, op == "gt"
        else:
            check.hi, check.hi_open = value, op == "lt"
        if values is not None:
            return all(not isinstance(v, bool) and isinstance(v, int | float) and check.in_interval(v) for v in values)
        if not c.numeric():
            return False
        return _inside(c, check)
    if op == "matches":
        if values is not None:
            return all(isinstance(v, str) and re.fullmatch(value, v) for v in values)
        return value in c.regexes
    return False


def _inside(inner: Constraint, outer: Constraint) -> bool:
    low_ok = inner.lo > outer.lo or (inner.lo == outer.lo and (inner.lo_open or not outer.lo_open))
    high_ok = inner.hi < outer.hi or (inner.hi == outer.hi and (inner.hi_open or not outer.hi_open))
    return low_ok and high_ok
