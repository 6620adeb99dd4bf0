"""Retries and circuit breakers, once for all of rtem: the bus, the executors and the LLM client.

    policy = RetryPolicy(max_attempts=5, initial_interval_s=0.2)     # the policy is data, not a loop
    breaker = CircuitBreaker("cart-0", threshold=3, cooldown_s=30)
    trial = breaker.before_call()          # raises BreakerOpen while open; True for the half-open trial
    ... then exactly one of breaker.success(), breaker.failure() or breaker.release(trial)

    closed ──(threshold consecutive failures)──► open ──(cooldown_s)──► half_open
      ▲                                            ▲                       │
      └───────────(the trial call succeeds)────────┼───────────────────────┤
                                                   └──(the trial fails)────┘

Half-open lets exactly one trial call through; every other caller is refused until the trial ends.
It lives in `bus` because every layer may import `bus` and none may import `agent`.

The retry loops themselves are tenacity's (`RetryPolicy.retrying` / `retrying_async`); the policy
only says how many attempts and how long each wait is, so it can also be read as data (`delays()`,
`interval()`) by a scheduler that does not loop, like `rtem run`'s retry of a failing incident.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed call is retried: at most `max_attempts` tries in all, waiting `initial_interval_s`
    after the first failure, then `backoff` times longer each time, never more than `max_interval_s`.
    Each wait is moved by up to ± `jitter` (a fraction of it), so retries from many callers do not align.
    Errors of a `non_retryable` type are never retried, whatever the caller would otherwise retry."""

    max_attempts: int = 3
    initial_interval_s: float = 0.2
    backoff: float = 2.0
    max_interval_s: float = 5.0
    jitter: float = 0.2
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be at least 1, not {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter is a fraction of the interval, in [0, 1], not {self.jitter}")

    def interval(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). A server's `retry_after`
        lengthens the wait, up to `max_interval_s`; nothing makes it longer than that."""
        wait = min(self.max_interval_s, self.initial_interval_s * self.backoff ** (attempt - 1))
        wait *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return max(0.0, min(self.max_interval_s, wait))

    def delays(self, rng: random.Random | None = None) -> list[float]:
        """The waits between the attempts: `max_attempts - 1` of them."""
        return [self.interval(attempt, rng=rng) for attempt in range(1, self.max_attempts)]

    def retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, self.non_retryable)

    def retrying(self, retry_on: tuple[type[BaseException], ...], *, unless: Callable[[BaseException], bool] | None = None,
                 sleep: Callable[[float], Any] = time.sleep) -> tenacity.Retrying:
        """A tenacity loop for this policy: `for attempt in policy.retrying(...): with attempt: call()`.
        Retries the `retry_on` errors that are `retryable` and not `unless(error)`; the last error is
        raised as itself. An error's `retry_after` (seconds, from a server) lengthens its wait."""
        return tenacity.Retrying(sleep=sleep, **self._tenacity(retry_on, unless))

    def retrying_async(self, retry_on: tuple[type[BaseException], ...], *,
                       unless: Callable[[BaseException], bool] | None = None,
                       sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> tenacity.AsyncRetrying:
        """`retrying` for coroutines: `async for attempt in policy.retrying_async(...): with attempt: ...`."""
        return tenacity.AsyncRetrying(sleep=sleep, **self._tenacity(retry_on, unless))

    def _tenacity(self, retry_on: tuple[type[BaseException], ...],
                  unless: Callable[[BaseException], bool] | None) -> dict[str, Any]:
        def retry(exc: BaseException) -> bool:
            return isinstance(exc, retry_on) and self.retryable(exc) and not (unless and unless(exc))

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.interval(state.attempt_number, getattr(error, "retry_after", None))

        return {"stop": tenacity.stop_after_attempt(self.max_attempts), "wait": wait,
                "retry": tenacity.retry_if_exception(retry), "reraise": True}


async def retry_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy,
                      retry_on: tuple[type[BaseException], ...], *,
                      sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """`await call()`, retried as `policy` says on the `retry_on` errors; the last error is raised."""
    async for attempt in policy.retrying_async(retry_on, sleep=sleep):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover


class BreakerOpen(Exception):
    """A circuit breaker refused a call: the call was not made."""

    def __init__(self, name: str, failures: int, retry_in_s: float):
        self.name, self.failures, self.retry_in_s = name, failures, max(0.0, retry_in_s)
        when = (f"next trial call in {self.retry_in_s:.1f} s" if retry_in_s > 0
                else "a trial call is in flight; wait for its outcome")
        super().__init__(f"the circuit breaker on {name} is open after {failures} consecutive failures; {when}")


class CircuitBreaker:
    """Stops calling a target that keeps failing, and tries it again after `cooldown_s`. Thread-safe.

    `clock` returns seconds (monotonic; tests pass their own). `on_change(old, new)` is called on every
    state change, under the breaker's lock: keep it quick (a metric, a log line)."""

    def __init__(self, name: str = "", threshold: int = 5, cooldown_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None):
        if threshold < 1:
            raise ValueError(f"CircuitBreaker.threshold must be at least 1, not {threshold}")
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.RLock()  # re-entrant: on_change may read the state
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
        """Consecutive failures so far (0 after a success)."""
        return self._failures

    def before_call(self) -> bool:
        """Raise BreakerOpen unless a call may go out now. True when this call is the half-open trial:
        no other call is let through until it reports success(), failure() or release(True)."""
        with self._lock:
            state = self._current()
            if state == CLOSED:
                return False
            if state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            raise BreakerOpen(self.name, self._failures, self._opened_at + self.cooldown_s - self._clock())

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
            if state == HALF_OPEN or (state == CLOSED and self._failures >= self.threshold):
                self._opened_at = self._clock()
                self._set(OPEN)

    def release(self, trial: bool) -> None:
        """A call ended that says nothing about the target's health (a refused request, a cancelled task);
        `trial` is what before_call returned, so a trial that ends this way lets the next one through."""
        if trial:
            with self._lock:
                self._trial_running = False

    def _current(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._set(HALF_OPEN)
        return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            old, self._state = self._state, state
            if self._on_change:
                self._on_change(old, state)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.state}, failures={self._failures})"
