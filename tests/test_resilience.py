"""The one retry policy and circuit breaker (bus/_resilience.py), and the executors on them: fast unit tests on
an injected clock and injected sleeps, no servers, no real waiting."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from agent.config import Settings
from agent.executors import Executors, PermanentError, Step, TransientError
from agent.llm import LLMBreakerOpen, LLMError
from bus import CLOSED, HALF_OPEN, OPEN, BreakerOpen, BusSettings, CircuitBreaker, RetryPolicy, retry_async
from rules import load_contracts


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold=3, cooldown_s=10.0, **kw):
    clock, changes = Clock(), []
    made = CircuitBreaker("cart-0", threshold, cooldown_s, clock=clock,
                          on_change=lambda old, new: changes.append((old, new)), **kw)
    return made, clock, changes


def opened(threshold=3, cooldown_s=10.0):
    made, clock, changes = breaker(threshold, cooldown_s)
    for _ in range(threshold):
        made.before_call()
        made.failure()
    return made, clock, changes


# -- the circuit breaker -----------------------------------------------------------------------------


def test_consecutive_failures_open_the_breaker_and_a_success_between_them_starts_over():
    made, _, changes = breaker(threshold=3)
    for ok in (False, False, True, False, False):
        assert made.before_call() is False
        made.success() if ok else made.failure()
    assert made.state == CLOSED and made.failures == 2 and changes == []
    made.failure()
    assert made.state == OPEN and made.failures == 3
    assert changes == [(CLOSED, OPEN)]


def test_an_open_breaker_refuses_and_says_when_to_try_again():
    made, clock, _ = opened(threshold=3, cooldown_s=10.0)
    clock.now += 4
    with pytest.raises(BreakerOpen) as refused:
        made.before_call()
    assert (refused.value.name, refused.value.failures) == ("cart-0", 3)
    assert refused.value.retry_in_s == pytest.approx(6.0)
    assert str(refused.value) == ("the circuit breaker on cart-0 is open after 3 consecutive failures; "
                                  "next trial call in 6.0 s")


def test_half_open_lets_exactly_one_trial_through_then_a_success_closes():
    made, clock, changes = opened(threshold=2, cooldown_s=10.0)
    clock.now += 10
    assert made.state == HALF_OPEN
    assert made.before_call() is True, "the trial"
    with pytest.raises(BreakerOpen, match="a trial call is in flight"):
        made.before_call()
    made.success()
    assert made.state == CLOSED and made.failures == 0
    assert made.before_call() is False
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_failed_trial_reopens_for_a_whole_cooldown():
    made, clock, changes = opened(threshold=2, cooldown_s=10.0)
    clock.now += 15
    assert made.before_call() is True
    made.failure()
    assert made.state == OPEN
    clock.now += 9.9
    with pytest.raises(BreakerOpen, match="next trial call in 0.1 s"):
        made.before_call()
    clock.now += 0.1
    assert made.before_call() is True
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]


def test_a_released_trial_lets_the_next_one_through_and_a_released_ordinary_call_changes_nothing():
    made, clock, _ = opened(threshold=1, cooldown_s=1.0)
    clock.now += 1
    trial = made.before_call()
    made.release(False)  # an ordinary call that was admitted while closed ends: the trial still runs
    with pytest.raises(BreakerOpen):
        made.before_call()
    made.release(trial)
    assert made.state == HALF_OPEN and made.before_call() is True


def test_concurrent_callers_get_one_trial_between_them():
    made, clock, _ = opened(threshold=1, cooldown_s=5.0)
    clock.now += 5
    start, results = threading.Barrier(16), []

    def call():
        start.wait()
        try:
            results.append(made.before_call())
        except BreakerOpen:
            results.append("refused")

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1 and results.count("refused") == 15


def test_on_change_may_read_the_breaker():
    seen = []
    made = CircuitBreaker("p", 1, 1.0, clock=Clock(), on_change=lambda old, new: seen.append(made.state))
    made.failure()
    assert seen == [OPEN]


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        CircuitBreaker("p", threshold=0)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter is a fraction"):
        RetryPolicy(jitter=2)


# -- the retry policy --------------------------------------------------------------------------------


def test_the_retry_policy_is_data():
    policy = RetryPolicy(max_attempts=5, initial_interval_s=0.5, backoff=2, max_interval_s=3, jitter=0)
    assert policy.delays() == [0.5, 1.0, 2.0, 3.0]
    assert policy.interval(1, retry_after=2.5) == 2.5 and policy.interval(1, retry_after=60) == 3
    assert RetryPolicy(max_attempts=1).delays() == []


def test_jitter_moves_each_delay_within_its_bounds_and_never_past_the_maximum():
    policy = RetryPolicy(max_attempts=8, initial_interval_s=0.2, backoff=2, max_interval_s=5, jitter=0.2)
    rng = random.Random(7)
    for _ in range(200):
        delays = policy.delays(rng)
        assert len(delays) == 7
        for attempt, delay in enumerate(delays, 1):
            base = min(5, 0.2 * 2 ** (attempt - 1))
            assert base * 0.8 <= delay <= min(5, base * 1.2)
    assert policy.delays(random.Random(1)) == policy.delays(random.Random(1)), "a seeded source repeats"
    assert len({tuple(policy.delays(rng)) for _ in range(5)}) == 5, "and jitter does move them"


def test_non_retryable_errors_are_named_in_the_policy():
    policy = RetryPolicy(non_retryable=(PermissionError,))
    assert policy.retryable(TimeoutError()) and not policy.retryable(PermissionError())


async def test_retry_async_retries_what_it_is_told_to_and_raises_the_last_error():
    slept, calls = [], []

    async def sleep(seconds):
        slept.append(seconds)

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError(f"try {len(calls)}")
        return "done"

    policy = RetryPolicy(max_attempts=3, initial_interval_s=1, jitter=0)
    assert await retry_async(flaky, policy, (TimeoutError,), sleep=sleep) == "done"
    assert slept == [1, 2]

    calls.clear()
    slept.clear()
    with pytest.raises(TimeoutError, match="try 2"):
        await retry_async(flaky, RetryPolicy(max_attempts=2, jitter=0), (TimeoutError,), sleep=sleep)
    calls.clear()
    with pytest.raises(TimeoutError, match="try 1"):
        await retry_async(flaky, RetryPolicy(non_retryable=(TimeoutError,)), (OSError,), sleep=sleep)
    calls.clear()
    with pytest.raises(TimeoutError, match="try 1"):
        await retry_async(flaky, policy, (ConnectionError,), sleep=sleep)


def test_the_bus_backoffs_are_settings(monkeypatch):
    monkeypatch.setenv("RTEM_PUBLISH_RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("RTEM_REDELIVERY_INITIAL_S", "1.5")
    monkeypatch.setenv("RTEM_NATS_RECONNECT_WAIT_S", "2")
    bus = Settings().bus_settings()
    assert bus.publish_retry.max_attempts == 4 and bus.publish_retry.max_interval_s == 3
    assert bus.redelivery.initial_interval_s == 1.5 and bus.reconnect_wait_s == 2
    assert BusSettings().publish_retry.max_attempts == 10


def test_the_llm_client_raises_the_shared_breaker_error_as_one_of_its_own():
    refused = LLMBreakerOpen("openai (m)", 5, 3.0)
    assert isinstance(refused, BreakerOpen) and isinstance(refused, LLMError)
    assert "open after 5 consecutive failures; next trial call in 3.0 s" in str(refused)


# -- the executors on them -------------------------------------------------------------------------------


class Scripted:
    """A transport answering from a script: "ok", "transient", "permanent", or an asyncio.Event to wait on."""

    def __init__(self, *script):
        self.script, self.sent = list(script), []

    async def send(self, contract, step, timeout):
        self.sent.append(step.key)
        answer = self.script.pop(0) if self.script else "ok"
        if isinstance(answer, asyncio.Event):
            await answer.wait()
            answer = "ok"
        if answer == "transient":
            raise TransientError("no reply within 1s")
        if answer == "permanent":
            raise PermanentError("answered 400")
        return {"ok": True, "result": {}}


@pytest.fixture
def contract():
    return load_contracts()["restart_instance"]


def step(n: int) -> Step:
    return Step(f"inc-1/{n}/do", "inc-1", "restart_instance", "cart-0", {}, "do")


def executors(transport, clock, **kw) -> Executors:
    kind = load_contracts()["restart_instance"].executor.kind
    return Executors({kind: transport}, policy=RetryPolicy(max_attempts=3, initial_interval_s=0, jitter=0),
                     breaker_threshold=2, breaker_cooldown_s=30, clock=clock, **kw)


async def test_a_target_that_keeps_failing_is_spared_until_the_cooldown_is_over(contract):
    clock, opened_for = Clock(), []
    transport = Scripted("permanent", "transient", "transient", "transient")
    runner = executors(transport, clock, on_breaker=lambda target, error: opened_for.append((target, error)))
    assert not (await runner.run(contract, step(1))).ok
    failed = await runner.run(contract, step(2))
    assert failed.attempts == 3 and failed.retryable and failed.breaker_open
    assert opened_for == [("cart-0", "no reply within 1s")] and runner.breakers["cart-0"].state == OPEN
    spared = await runner.run(contract, step(3))
    assert spared.breaker_open and "next trial call in 30.0 s" in spared.error
    assert transport.sent == ["inc-1/1/do"] + ["inc-1/2/do"] * 3, "nothing sent while open"


async def half_open(contract, *script):
    """Executors whose breaker on cart-0 two failing steps opened (threshold 2) and whose cooldown then
    passed on the clock; the transport answers `script` from the third step on."""
    clock, transport = Clock(), Scripted("permanent", "permanent", *script)
    runner = executors(transport, clock)
    for n in (1, 2):
        await runner.run(contract, step(n))
    clock.now += 30
    return runner, transport


async def test_a_half_open_target_gets_one_trial_step_among_concurrent_ones(contract):
    release = asyncio.Event()
    runner, transport = await half_open(contract, release)
    trial = asyncio.ensure_future(runner.run(contract, step(3)))
    await asyncio.sleep(0)  # the trial is now waiting on its target
    others = await asyncio.gather(*(runner.run(contract, step(n)) for n in range(4, 9)))
    assert all(o.breaker_open and not o.ok for o in others)
    release.set()
    assert (await trial).ok and runner.breaker("cart-0").state == CLOSED
    assert transport.sent[2:] == ["inc-1/3/do"]


async def test_a_half_open_trial_is_not_retried_and_a_failure_reopens(contract):
    runner, _ = await half_open(contract, "transient", "ok")
    trial = await runner.run(contract, step(3))
    assert trial.attempts == 1 and trial.breaker_open and runner.breaker("cart-0").state == OPEN


async def test_a_cancelled_trial_lets_the_next_one_through(contract):
    runner, _ = await half_open(contract, asyncio.Event())  # a target that never answers
    trial = asyncio.ensure_future(runner.run(contract, step(3)))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert runner.breaker("cart-0").state == HALF_OPEN
    assert (await runner.run(contract, step(4))).ok
