"""Static analysis of guardrails: unknown action types, rules that can never match, shadowed rules.

A rule's `match` is taken apart into its alternatives (disjunctive normal form: `any` branches; an
`in` list stays one set-valued test) and each alternative into per-field constraints: a finite set of
allowed values when one is known (from `eq`/`in`, or from the field's domain: risk levels, entity
types, hours, the action types with a contract, a parameter's enum), excluded values, a numeric
interval, presence and regular expressions.

- An alternative can never match when some field's constraints leave no value (or contradict the
  field's type). A rule can never match when none of its alternatives can. Parameters and target
  types are judged against the action contracts: a rule that only matches proposals the contract
  refuses (`restart_instance` on a `service`, `params.replica` for `scale_out`) never matters either.
- Rule R is shadowed by deny rule D when every alternative of R implies some alternative of D (and D
  has no gates): whenever R matches, D denies, so R's own outcome can never decide a verdict
  (`rules._shadowing`). The shapes both work on are in `rules._rule_shapes`.

Everything here is sound in one direction: it reports only what is certain; when unsure, a rule is
taken to be able to match and not to be shadowed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

from rules._contracts import ActionContract
from rules._fitness import FAULT_TYPES, TARGET_ROLES
from rules._guardrails import Guardrail
from rules._rule_shapes import Alternative, Constraint, Finding, Term
from rules._shadowing import shadowed

ENTITY_TYPES = ("service", "instance", "host", "database", "cache", "queue", "external")
SEVERITIES = ("info", "warning", "error", "critical")
RISKS = ("low", "medium", "high")
ENUMS: dict[str, tuple] = {"risk": RISKS, "incident_severity": SEVERITIES, "target_type": ENTITY_TYPES,
                           "in_blast_radius": (True, False), "cause_type": ENTITY_TYPES, "cause_fault": FAULT_TYPES,
                           "target_role": TARGET_ROLES, "target_deployed": (True, False),
                           "target_changed": (True, False)}
INT_RANGES = {"hour": (0, 23), "minute": (0, 59), "weekday": (0, 6), "incident_severity_rank": (0, 3)}
TEXT_FIELDS = {"action", "risk", "proposed_by", "cause", "target", "target_type", "target_service", "incident_id",
               "incident_severity", "date", "cause_type", "cause_fault", "target_role"}
NUMBER_FIELDS = {"target_tier", "target_signals", *INT_RANGES}
_REFUSED_HINT = "the contract refuses them before this rule can matter; fix the rule or the contract"


def analyze(rules: list[Guardrail], contracts: Mapping[str, ActionContract],
            now: datetime | None = None, broken: set[str] = frozenset()) -> list[Finding]:
    """Every finding for `rules` (in evaluation order), errors and warnings. `broken` names action types
    whose contract file exists but does not load: they are not unknown, and the analysis that needs
    every contract is skipped until they load."""
    findings: list[Finding] = []
    shapes: dict[str, list[Alternative]] = {}
    for rule in rules:
        unknown = list(_unknown_actions(rule, {*contracts, *broken}))
        findings.extend(unknown)
        if unknown or broken:
            continue
        alternatives = [_constrain(terms, contracts) for terms in _branches(rule.match or {}, ("match",))]
        possible = [a for a in alternatives if a.problem is None]
        if not possible:
            logical = [a.problem for a in alternatives if a.problem[3] == "error"]
            if len(logical) == len(alternatives):
                message, path, hint, _ = logical[0]
                findings.append(Finding("never_matches", rule, path, f"can never match: {message}", hint))
            else:
                message, path, hint, _ = next(a.problem for a in alternatives if a.problem[3] == "warning")
                findings.append(Finding("never_matches", rule, path, f"only matches proposals the contracts refuse "
                                        f"(the guard denies them anyway): {message}", hint, severity="warning"))
            continue
        if len(possible) < len(alternatives):
            message, path, hint, _ = next(a.problem for a in alternatives if a.problem)
            findings.append(Finding("never_matches", rule, path, f"one alternative can never match: {message}",
                                    hint, severity="warning"))
        findings.extend(_expired(rule, now))
        shapes[rule.id] = possible
    findings.extend(shadowed(rules, shapes, contracts))
    return findings


# -- taking conditions apart --------------------------------------------------------------------------

def _branches(condition: Mapping[str, Any], path: tuple) -> list[list[Term]]:
    result: list[list[Term]] = [[]]
    for key, spec in condition.items():
        where = path + (key,)
        if key == "all":
            for index, nested in enumerate(spec):
                parts = _branches(nested, where + (index,))
                result = [a + b for a in result for b in parts]
        elif key == "any":
            parts = [b for index, nested in enumerate(spec) for b in _branches(nested, where + (index,))]
            result = [a + b for a in result for b in parts]
        elif isinstance(spec, Mapping):
            terms = [Term(key, op, value, where + (op,)) for op, value in spec.items()]
            result = [a + terms for a in result]
        else:
            result = [a + [Term(key, "eq", spec, where)] for a in result]
    return result


def _constrain(terms: list[Term], contracts: Mapping[str, ActionContract]) -> Alternative:
    fields: dict[str, Constraint] = {}
    for term in terms:
        c = fields.setdefault(term.field, Constraint())
        c.paths.append(term.path)
        value = term.value
        if term.op == "exists":
            c.present, c.absent = (c.present or value), (c.absent or not value)
            continue
        c.present = True
        c.positive = c.positive or term.op in ("eq", "in")
        if term.op == "eq":
            c.named.append(value)
            c.allowed = {value} if c.allowed is None else c.allowed & {value}
        elif term.op == "in":
            c.allowed = set(value) if c.allowed is None else c.allowed & set(value)
        elif term.op == "ne":
            c.excluded.add(value)
        elif term.op == "not_in":
            c.excluded.update(value)
        elif term.op == "matches":
            c.regexes.append(value)
        elif term.op in ("gt", "gte"):
            if value > c.lo or (value == c.lo and term.op == "gt"):
                c.lo, c.lo_open = value, term.op == "gt"
        elif term.op in ("lt", "lte"):
            if value < c.hi or (value == c.hi and term.op == "lt"):
                c.hi, c.hi_open = value, term.op == "lt"
    alternative = Alternative(fields, terms)
    alternative.problem = _impossible(fields, contracts)
    if alternative.problem is None:
        _derive(fields, contracts)
    return alternative


def _derive(fields: dict[str, Constraint], contracts: Mapping[str, ActionContract]) -> None:
    """What the action implies for a proposal its contract accepts: the risk, the possible target types.
    (A proposal the contract refuses is denied anyway, so shadowing may assume an accepted one.)"""
    actions = fields["action"].allowed if "action" in fields and fields["action"].positive else None
    if not actions:
        return
    risk = fields.get("risk")
    if risk is None:
        fields["risk"] = Constraint(allowed={contracts[a].risk for a in actions}, present=True)
    if "target_type" not in fields:
        types = {t for a in actions for t in contracts[a].target_types}
        fields["target_type"] = Constraint(allowed=types, present=True)


def _impossible(fields: dict[str, Constraint], contracts: Mapping[str, ActionContract]):
    """Why no proposal the contracts accept can satisfy these constraints, or None."""
    actions = _domain_of("action", fields, contracts)
    if "action" in fields:
        fields["action"].allowed = actions
    for name, c in sorted(fields.items(), key=lambda item: item[0] != "action"):  # the action first
        where = c.paths[0]
        if c.absent and c.present:
            return f"{name} is tested for absence (exists: false) and for a value", where, "", "error"
        if name in TEXT_FIELDS and c.numeric():
            return f"{name} is text; lt/lte/gt/gte compare numbers", where, "", "error"
        domain = _domain_of(name, fields, contracts) if name != "action" else actions
        if domain is not None and c.allowed is None and c.present:
            c.allowed = set(domain)
        if c.allowed is not None:
            before = set(c.allowed)
            typed = {v for v in c.allowed if _fits_type(name, v)}
            c.allowed = {v for v in typed if v not in c.excluded and c.in_interval(v)
                         and all(isinstance(v, str) and re.fullmatch(r, v) for r in c.regexes)}
            if domain is not None:
                c.allowed &= set(domain)
            if not c.allowed:
                return _why_empty(name, c, before, typed, domain), where, _hint(name, before, domain), "error"
        elif c.numeric():
            low = c.lo + (1e-9 if c.lo_open else 0)
            if c.hi < c.lo or (c.hi == c.lo and (c.lo_open or c.hi_open)):
                return f"{name}: no number is both {_bound(c, 'lo')} and {_bound(c, 'hi')}", where, "", "error"
            high = c.hi - (1e-9 if c.hi_open else 0)
            if name in NUMBER_FIELDS and math.isfinite(low) and math.isfinite(high) \
                    and math.floor(high) < math.ceil(low):
                return f"{name} is a whole number; none is {_bound(c, 'lo')} and {_bound(c, 'hi')}", where, "", "error"
    # Only an action named with eq/in ties the rule to today's contracts; `action: {ne: x}` is meant to
    # cover action types added later too, so it is not judged against the contracts there are now.
    actions = fields["action"].allowed if "action" in fields and fields["action"].positive else None
    if "target_type" in fields and fields["target_type"].allowed is not None and actions is not None:
        types = fields["target_type"].allowed
        if not any(set(contracts[a].target_types) & types for a in actions if a in contracts):
            acts = ", ".join(f"{a} on {'/'.join(contracts[a].target_types)}" for a in sorted(actions) if a in contracts)
            return (f"target_type {', '.join(map(str, sorted(types)))} never fits the action's contract ({acts})",
                    fields["target_type"].paths[0],
                    _REFUSED_HINT, "warning")
    for name, c in fields.items():
        if name.startswith("params.") and c.present:
            param = name.removeprefix("params.")
            candidates = sorted(actions) if actions is not None else sorted(contracts)
            limits = _param_range(param, candidates, contracts)
            if limits is not None and c.numeric() and not _overlaps(c, *limits):
                return (f"{name} is between {limits[0]:g} and {limits[1]:g} in the contract; none is "
                        + " and ".join(_bound(c, end) for end, v in (("lo", c.lo), ("hi", c.hi)) if math.isfinite(v)),
                        c.paths[0], _REFUSED_HINT,
                        "warning")
            if candidates and not any(param in _params(contracts[a]) for a in candidates if a in contracts):
                takes = "; ".join(f"{a}: {', '.join(sorted(_params(contracts[a]))) or 'none'}"
                                  for a in candidates[:4] if a in contracts)
                close = difflib.get_close_matches(param, {p for a in candidates if a in contracts
                                                          for p in _params(contracts[a])}, n=1)
                hint = (f"did you mean params.{close[0]}? " if close else "") + f"parameters: {takes}"
                return f"no action it can match takes a parameter {param!r}", c.paths[0], hint, "error"
    return None


def _domain_of(name: str, fields: dict[str, Constraint], contracts: Mapping[str, ActionContract]) -> set | None:
    if name == "action":
        c = fields.get("action")
        known = set(contracts)
        return known if c is None or c.allowed is None else c.allowed & known
    if name in ENUMS:
        domain = set(ENUMS[name])
        if name == "risk" and "action" in fields:
            actions = fields["action"].allowed
            if actions is not None:
                domain &= {contracts[a].risk for a in actions if a in contracts}
        return domain
    if name in INT_RANGES:
        first, last = INT_RANGES[name]
        return set(range(first, last + 1))
    if name.startswith("params."):
        actions = fields["action"].allowed if "action" in fields else None
        return _param_enum(name.removeprefix("params."), actions, contracts)
    return None


def _param_enum(param: str, actions: set | None, contracts: Mapping[str, ActionContract]) -> set | None:
    schemas = [_params(contracts[a]).get(param) for a in (actions if actions is not None else contracts)
               if a in contracts]
    schemas = [s for s in schemas if s is not None]
    if not schemas or not all(isinstance(s, Mapping) and "enum" in s for s in schemas):
        return None
    return {v for s in schemas for v in s["enum"]}


def _param_range(param: str, actions: list[str], contracts: Mapping[str, ActionContract]):
    """The (min, max) a numeric parameter may take under the contracts that have it, or None."""
    schemas = [_params(contracts[a]).get(param) for a in actions if a in contracts]
    schemas = [s for s in schemas if isinstance(s, Mapping)]
    if not schemas or not all("minimum" in s and "maximum" in s for s in schemas):
        return None
    return min(s["minimum"] for s in schemas), max(s["maximum"] for s in schemas)


def _overlaps(c: Constraint, low: float, high: float) -> bool:
    return c.in_interval(low) or c.in_interval(high) or (low < c.lo < high) or (low < c.hi < high)


def _params(contract: ActionContract) -> dict[str, Any]:
    return contract.params_schema.get("properties") or {}


def _fits_type(name: str, value: Any) -> bool:
    if name in TEXT_FIELDS:
        return isinstance(value, str)
    if name in NUMBER_FIELDS:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True


def _why_empty(name: str, c: Constraint, before: set, typed: set, domain: set | None) -> str:
    if before and not typed:
        kind = "text" if name in TEXT_FIELDS else "a number"
        return f"{name} is {kind}; {_show(before)} can never equal it"
    if domain is not None and before and not (before & set(domain)) and (name in ENUMS or name == "action"):
        return f"{_show(before)} is not a possible {name}"
    if len(set(c.named)) > 1:
        return f"no {name} is both {' and '.join(_show({v}) for v in c.named[:3])}"
    if name in INT_RANGES and c.numeric():
        first, last = INT_RANGES[name]
        bounds = " and ".join(_bound(c, end) for end, v in (("lo", c.lo), ("hi", c.hi)) if math.isfinite(v))
        return f"{name} runs from {first} to {last}; none is {bounds}"
    return f"the tests on {name} leave no possible value"


def _hint(name: str, values: set, domain: set | None) -> str:
    if domain is None or name not in ENUMS:
        return ""
    strays = [v for v in values if isinstance(v, str) and v not in domain]
    close = difflib.get_close_matches(strays[0], [str(d) for d in domain], n=1) if strays else []
    return (f"did you mean {close[0]!r}? " if close else "") + f"possible values: {', '.join(map(str, ENUMS[name]))}"


def _show(values: set) -> str:
    shown = sorted(values, key=str)
    text = ", ".join(repr(v) for v in shown[:4]) + (", …" if len(shown) > 4 else "")
    return text if len(shown) == 1 else "{" + text + "}"


def _bound(c: Constraint, end: str) -> str:
    if end == "lo":
        return f"{'>' if c.lo_open else '>='} {c.lo:g}"
    return f"{'<' if c.hi_open else '<='} {c.hi:g}"


# -- unknown actions, expired windows -------------------------------------------------------------------

def _unknown_actions(rule: Guardrail, contracts: Collection[str]) -> Iterator[Finding]:
    for terms in _branches(rule.match or {}, ("match",)):
        for term in terms:
            if term.field != "action" or term.op not in ("eq", "ne", "in", "not_in"):
                continue
            values = term.value if isinstance(term.value, list) else [term.value]
            for index, value in enumerate(values):
                if isinstance(value, str) and value not in contracts:
                    close = difflib.get_close_matches(value, sorted(contracts), n=1)
                    hint = (f"did you mean {close[0]!r}? " if close else "") + \
                        f"actions with a contract: {', '.join(sorted(contracts))}"
                    path = term.path + ((index,) if isinstance(term.value, list) else ())
                    yield Finding("unknown_action", rule, path, f"unknown action type {value!r}", hint)
                    return


def _expired(rule: Guardrail, now: datetime | None) -> Iterator[Finding]:
    windows = rule.gates.during
    if now is None or not windows or not all(w.one_off for w in windows):
        return
    if all(w.end <= now for w in windows):
        last = max(w.end for w in windows)
        yield Finding("expired", rule, ("during",),
                      f"has expired: its last window ended {last.isoformat()}, so it can no longer match",
                      "remove the rule or give it a new window", severity="warning")
