"""What the static analysis of guardrails (`rules._analysis`) makes of a rule: its `match` as alternatives,
each a list of terms and the per-field constraints they add up to, and the findings it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rules._guardrails import Guardrail

NUMERIC_OPS = {"lt", "lte", "gt", "gte"}


@dataclass
class Finding:
    """One thing `rules check` has to say about a rule; `path` is where inside the rule."""

    kind: str
    rule: Guardrail
    path: tuple
    message: str
    hint: str = ""
    severity: str = "error"


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    value: Any
    path: tuple


@dataclass
class Constraint:
    """What one alternative of a rule says about one field."""

    allowed: set | None = None
    excluded: set = field(default_factory=set)
    lo: float = -math.inf
    lo_open: bool = True
    hi: float = math.inf
    hi_open: bool = True
    present: bool = False
    absent: bool = False
    regexes: list[str] = field(default_factory=list)
    paths: list[tuple] = field(default_factory=list)
    positive: bool = False  # an eq or in names the values (not only ne/not_in, which stay open-ended)
    named: list = field(default_factory=list)  # the values eq names, for messages

    def numeric(self) -> bool:
        return self.lo != -math.inf or self.hi != math.inf

    def in_interval(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return not self.numeric()
        above = value > self.lo or (value == self.lo and not self.lo_open)
        below = value < self.hi or (value == self.hi and not self.hi_open)
        return above and below


@dataclass
class Alternative:
    fields: dict[str, Constraint]
    terms: list[Term]
    # (message, path, hint, severity) when it can never match: "error" when no value satisfies the
    # tests, "warning" when only proposals the contracts refuse (and the guard denies anyway) can
    problem: tuple[str, tuple, str, str] | None = None
