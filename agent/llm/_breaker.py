"""A circuit breaker on the LLM provider: after repeated failures, stop calling it for a while.

    closed ──(failure_threshold consecutive failures)──► open ──(reset_timeout_s)──► half_open
      ▲                                                    ▲                            │
      └──────────────(the trial call succeeds)─────────────┼────────────────────────────┤
                                                           └──(the trial call fails)────┘

While open, calls fail at once with `BreakerOpen` and rtem handles incidents in degraded mode
(deterministic reasoner). Half-open lets exactly one trial call through; the others still see it open.
Breakers are shared per provider (base URL and model) within a process, so every incident sees the same one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import BreakerOpen

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    reset_timeout_s: float = 30.0


class CircuitBreaker:
    def __init__(self, name: str, policy: BreakerPolicy = BreakerPolicy(),
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None):
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._current()

    @property
    def failures(self) -> int:
        return self._failures

    def before_call(self) -> None:
        """Raise BreakerOpen unless a call may go out now (closed, or the one half-open trial)."""
        with self._lock:
            state = self._current()
            if state == CLOSED:
                return
            if state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            retry_in = self._opened_at + self.policy.reset_timeout_s - self._clock()
            raise BreakerOpen(self.name, self._failures, retry_in)

    def success(self) -> None:
        with self._lock:
            self._trial_running = False
            self._failures = 0
            self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            state = self._current()
            self._trial_running = False
            self._failures += 1
            if state == HALF_OPEN or self._failures >= self.policy.failure_threshold:
                self._opened_at = self._clock()
                self._set(OPEN)

    def release(self) -> None:
        """A call that neither succeeded nor failed on the provider's account (a 400, say) ends its trial."""
        with self._lock:
            self._trial_running = False

    def _current(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.policy.reset_timeout_s:
            self._set(HALF_OPEN)
        return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            old, self._state = self._state, state
            if self._on_change:
                self._on_change(old, state)


_registry: dict[tuple, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(key: tuple, name: str, policy: BreakerPolicy,
                on_change: Callable[[str, str], None] | None = None) -> CircuitBreaker:
    """The process-wide breaker of one provider; created on first use, policy fixed then."""
    with _registry_lock:
        breaker = _registry.get(key)
        if breaker is None or breaker.policy != policy:
            breaker = _registry[key] = CircuitBreaker(name, policy, on_change=on_change)
        return breaker
