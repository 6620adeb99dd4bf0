"""The one adapter over durable-rules. Nothing else in rtem imports `durable`.

durable-rules is unmaintained since 2020 and does not import on Python 3.13, so it stays behind this
small surface: a `Condition` language (plain data, shared by detection and guardrail files) compiled
into one durable-rules ruleset, and `CompiledRuleset.match(fact)`, which returns the ids of *every*
rule whose condition holds. Facts (not events) are asserted so that one input can fire many rules;
each is retracted right after, so the engine keeps no state between calls: windows and counters are
ours, in event time, because durable-rules' own timers run on the wall clock.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

import json

import durable_rules_engine as _native
from durable import engine
from durable import lang as durable_lang
from durable.lang import get_host, m, ruleset, when_all

OPERATORS = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "exists", "matches")
# durable-rules hangs building a ruleset in which one test has more than ~500 successors, and fails
# (error 108) when more than 256 rules end on the same test. A rule's alternatives (its condition in
# disjunctive normal form) bound both: one rule may have at most this many, and a CompiledRuleset
# spreads its rules over as many durable-rules rulesets as it takes to keep each under this total.
MAX_BRANCHES = 200
ANSWER_CACHE_SIZE = 65536
_ruleset_counter = itertools.count(1)
_lock = threading.Lock()


class _Host(engine.Host):
    """durable-rules' host without its dispatch threads. durable-rules' own host walks its rulesets from
    two chains of `threading.Timer`s, a new thread per ruleset every round and a round every 0.2 s,
    to run timers and queued actions; rtem uses neither (facts are asserted and retracted in the
    caller's thread, windows are ours), so those threads only took the GIL from the hot path — a
    stall of up to the interpreter's switch interval each time. It is installed as durable-rules'
    host once, under `_lock`, before rtem defines its first ruleset; nothing else in rtem uses
    durable-rules (this module is the one adapter)."""

    def _run(self) -> None:
        pass


def _host():
    """durable-rules' host (rtem's `_Host`); call under `_lock`. Also registers rulesets defined since
    the last call."""
    if durable_lang._main_host is None:
        durable_lang._main_host = _Host()
    return get_host()


class ConditionError(ValueError):
    """A condition that cannot be compiled; `path` says where inside the condition."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


def compile_condition(condition: Mapping[str, Any], fields: dict[str, str], path: str = "match"):
    """Turn a condition mapping into a durable-rules expression.

    A condition maps field paths (dotted, e.g. `attributes.host.name` is looked up as the key
    `host.name` under `attributes` when that key exists) to either a literal (equality) or a
    mapping of operators. The keys `all` and `any` take lists of nested conditions. An empty
    condition matches every fact.
    """
    if not isinstance(condition, Mapping):
        raise ConditionError("a condition is a mapping of fields to values or operators", path)
    terms = []
    for key, spec in condition.items():
        where = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(spec, list) or not spec:
                raise ConditionError(f"'{key}' takes a non-empty list of conditions", where)
            parts = [compile_condition(c, fields, f"{where}[{i}]") for i, c in enumerate(spec)]
            expr = parts[0]
            for part in parts[1:]:
                expr = (expr & part) if key == "all" else (expr | part)
            terms.append(expr)
            continue
        slot = fields.setdefault(str(key), f"f{len(fields)}")
        ref = getattr(m, slot)
        if not isinstance(spec, Mapping):
            terms.append(ref == _literal(spec, where))
            continue
        if not spec:
            raise ConditionError("an operator mapping needs at least one operator", where)
        for op, value in spec.items():
            terms.append(_operator(ref, str(op), value, f"{where}.{op}"))
    if not terms:
        return m.rtem == 1  # every fact carries rtem=1; durable-rules has no plain "true"
    expr = terms[0]
    for term in terms[1:]:
        expr = expr & term
    return expr


def _operator(ref, op: str, value: Any, where: str):
    if op == "eq":
        return ref == _literal(value, where)
    if op == "ne":
        return ref != _literal(value, where)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ConditionError(f"'{op}' takes a non-empty list", where)
        values = [_literal(v, where) for v in value]
        if op == "in":
            expr = ref == values[0]
            for v in values[1:]:
                expr = expr | (ref == v)
            return expr
        expr = ref != values[0]
        for v in values[1:]:
            expr = expr & (ref != v)
        return expr
    if op in ("lt", "lte", "gt", "gte"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConditionError(f"'{op}' compares with a number, not {value!r}", where)
        return {"lt": ref < value, "lte": ref <= value, "gt": ref > value, "gte": ref >= value}[op]
    if op == "exists":
        if not isinstance(value, bool):
            raise ConditionError("'exists' takes true or false", where)
        # durable-rules' own absence test (-m.x) re-fires forever on facts; use a presence flag.
        return getattr(m, f"{ref._left}_present") == int(value)
    if op == "matches":
        if not isinstance(value, str):
            raise ConditionError("'matches' takes a regular expression string", where)
        try:
            re.compile(value)
        except re.error as exc:
            raise ConditionError(f"bad regular expression: {exc}", where) from None
        return ref.matches(value)
    raise ConditionError(f"unknown operator '{op}'; use one of {', '.join(OPERATORS)}", where)


def _literal(value: Any, where: str):
    if isinstance(value, str | int | float | bool):
        return value
    raise ConditionError(f"compares with a string, number or boolean, not {type(value).__name__}", where)


def condition_branches(condition: Mapping[str, Any]) -> int:
    """How many alternatives a condition has in disjunctive normal form (the paths durable-rules
    builds for it): the entries of an `any` and the values of an `in` are alternatives; terms side by
    side multiply them."""
    total = 1
    for key, spec in condition.items():
        if key == "any":
            total *= sum(condition_branches(c) for c in spec)
        elif key == "all":
            total *= math.prod(condition_branches(c) for c in spec)
        elif isinstance(spec, Mapping):
            total *= len(spec.get("in", [None]))
    return total


class CompiledRuleset:
    """Conditions by rule id, compiled into durable-rules rulesets of at most MAX_BRANCHES each.

    `match(fact)` asserts the fact, collects every rule that fired, retracts it, and returns the
    ids in the order the rules were given.
    """

    def __init__(self, conditions: Mapping[str, Mapping[str, Any]], name: str = "rtem"):
        self.fields: dict[str, str] = {}
        self.order = {rule_id: i for i, rule_id in enumerate(conditions)}
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)
        self._hits: list[str] = []
        self._facts = itertools.count(1)
        self._answers: dict[tuple, tuple[str, ...]] = {}
        self.names: list[str] = []
        self.closed = False
        chunk: dict[str, Any] = {}
        weight = 0
        for rule_id, condition in conditions.items():
            branches = condition_branches(condition or {})
            if branches > MAX_BRANCHES:
                raise ConditionError(f"{branches} alternatives, over the limit of {MAX_BRANCHES}", "match")
            if chunk and weight + branches > MAX_BRANCHES:
                self._define(base, chunk)
                chunk, weight = {}, 0
            chunk[rule_id] = compile_condition(condition or {}, self.fields)
            weight += branches
        if chunk:
            self._define(base, chunk)

    def _define(self, base: str, compiled: dict[str, Any]) -> None:
        name = f"{base}_{next(_ruleset_counter)}"
        with _lock:
            _host()
        with _lock, ruleset(name):
            for rule_id, expr in compiled.items():
                when_all(expr)(self._recorder(rule_id))
        self.names.append(name)

    @staticmethod
    def check(condition: Mapping[str, Any]) -> None:
        """Everything building a ruleset would check, without defining one (durable-rules never frees
        a ruleset): raises ConditionError if the condition is bad or has too many alternatives."""
        branches = condition_branches(condition or {})
        if branches > MAX_BRANCHES:
            raise ConditionError(f"{branches} alternatives, over the limit of {MAX_BRANCHES}; split the rule, "
                                 "or shorten its 'in' lists and 'any' branches", "")
        compile_condition(condition or {}, {})

    def _recorder(self, rule_id: str):
        def fired(_c):
            self._hits.append(rule_id)
        fired.__name__ = f"rule_{self.order[rule_id]}"
        return fired

    def close(self) -> None:
        """Free the native rulesets: durable-rules keeps every ruleset ever defined until told. Close
        only what nothing evaluates any more; `match` on a closed ruleset raises."""
        with _lock:
            host = _host()
            for name in self.names:
                rules = host._ruleset_directory.pop(name, None)
                if rules is None:
                    continue
                if rules in host._ruleset_list:
                    host._ruleset_list.remove(rules)
                _native.delete_ruleset(rules._handle)
            self.closed = True

    def match(self, fact: Mapping[str, Any]) -> list[str]:
        """The ids of every rule whose condition holds for `fact`, in the order the rules were given."""
        return list(self.match_values(tuple([lookup(fact, path) for path in self.fields])))

    def match_values(self, values: tuple[Any, ...]) -> tuple[str, ...]:
        """`match` for a caller that reads the values of `self.fields` (in that order) straight from its
        own objects: no fact mapping is built unless the answer is not known yet (the hot path)."""
        if self.closed:
            raise RuntimeError("this rule set was replaced by a reload and freed; judge with the current one")
        if not self.names:
            return ()
        # Which rules fire depends only on the values of the fields the conditions name (the engine
        # keeps no state between calls), so one answer serves every fact with the same values. The
        # values tuple is the key as it is; a list or mapping among them makes it unhashable, and such
        # facts (rare: conditions compare scalars) are asked of the engine every time.
        try:
            known = self._answers.get(values)
            cacheable = True
        except TypeError:
            known, cacheable = None, False
        if known is not None:
            return known
        flat: dict[str, Any] = {"id": next(self._facts), "rtem": 1}
        for slot, value in zip(self.fields.values(), values):
            flat[f"{slot}_present"] = int(value is not None)
            if value is not None:
                flat[slot] = value
        payload = json.dumps(flat, ensure_ascii=False)
        with _lock:
            host = _host()  # registers rulesets defined since the last call
            self._hits = []
            for name in self.names:
                rules = host.get_ruleset(name)
                # Most facts match nothing: ask the native engine directly and skip the exception
                # durable-rules' Python layer raises for that case (a third of the cost of a match).
                result = _native.assert_fact(rules._handle, payload)
                if result[0] == 1:
                    continue
                host._handle_function(rules, lambda _r: rules._handle_result(_r, flat), result, None)
                host.retract_fact(name, flat)
            hits = self._hits
        answer = tuple(sorted(set(hits), key=self.order.__getitem__))
        if cacheable:
            if len(self._answers) >= ANSWER_CACHE_SIZE:
                self._answers.clear()
            self._answers[values] = answer
        return answer


def live_rulesets() -> int:
    """How many durable-rules rulesets this process holds (for tests and leak checks)."""
    with _lock:
        return len(_host()._ruleset_directory)


def lookup(fact: Mapping[str, Any], path: str) -> Any:
    """Find a dotted path in nested mappings; a key that itself has dots wins (`host.name`)."""
    if path in fact:
        return fact[path]
    head, _, rest = path.partition(".")
    while rest:
        node = fact.get(head)
        if isinstance(node, Mapping):
            found = lookup(node, rest)
            if found is not None:
                return found
        more, _, rest = rest.partition(".")
        head = f"{head}.{more}"
    return None
