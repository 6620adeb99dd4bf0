"""The per-incident budget of LLM calls and tokens: one incident cannot run up the bill or the queue."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ._errors import BudgetExhausted


@dataclass
class IncidentBudget:
    max_calls: int
    max_tokens: int
    calls: int = 0
    tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reserve(self, estimated_tokens: int) -> None:
        """Claim one call expected to use about `estimated_tokens`; raise BudgetExhausted if it would not fit."""
        with self._lock:
            if self.calls >= self.max_calls:
                raise BudgetExhausted(f"the incident's budget of {self.max_calls} LLM calls is used up")
            if self.tokens + estimated_tokens > self.max_tokens:
                raise BudgetExhausted(f"the incident's budget of {self.max_tokens} LLM tokens would be exceeded "
                                      f"({self.tokens} used, about {estimated_tokens} more needed)")
            self.calls += 1

    def charge(self, tokens: int) -> None:
        with self._lock:
            self.tokens += tokens
