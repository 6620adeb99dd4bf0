"""Executors: the edge where rtem's decisions touch the world.

An executor runs one step (an action or its compensation) with a timeout, retries with backoff and
jitter for retryable failures (the policy is data: `bus.RetryPolicy`), and a `bus.CircuitBreaker` per
target that lets one trial step through once its cooldown is over.
Every request carries the step's idempotency key, so a target that has applied it answers with the
first result instead of acting again; the ledger (agent/ledger.py) makes rtem itself never start a
completed step twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from bus import CLOSED, OPEN, BreakerOpen, Bus, CircuitBreaker, RetryPolicy
from rules import ActionContract

from . import metrics
from .http_executor import HttpRequest, RequestError, read_secrets, render_request, scrub, step_variables
from .telemetry import inject, tracer

log = logging.getLogger("rtem.executors")


@dataclass
class Step:
    """One thing to do: an action, or the compensation of one."""

    key: str
    incident_id: str
    action: str
    target: str
    params: dict[str, Any]
    kind: str = "do"  # do | compensate


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    retryable: bool = False
    breaker_open: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "error": self.error, "attempts": self.attempts,
                "breaker_open": self.breaker_open}


class Transport(Protocol):
    """Sends one request; raises TransientError for what is worth retrying, PermanentError otherwise."""

    async def send(self, contract: ActionContract, step: Step, timeout: float) -> dict[str, Any]: ...


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


class NatsTransport(Transport):
    """Request/reply on the contract's subject; the reply is `{"ok", "error", "result"}`.

    A reply lost with a connection (the server restarted while the target worked) would otherwise
    be waited for until the contract's timeout: when the bus reconnects during a request, the request
    is sent again at once with the same idempotency key, and the target answers it once."""

    def __init__(self, bus: Bus):
        self.nc, self.reconnects = bus.nc, bus.reconnects

    async def send(self, contract, step, timeout):
        subject = contract.executor.subject.format(action=step.action, target=step.target)
        body = json.dumps({"action": step.action, "target": step.target, "params": step.params,
                           "idempotency_key": step.key, "incident_id": step.incident_id}).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self.reconnects.count
            request = asyncio.ensure_future(self.nc.request(
                subject, body, timeout=max(deadline - loop.time(), 0.01),
                headers=inject({"Rtem-Idempotency-Key": step.key})))
            reconnected = asyncio.ensure_future(self.reconnects.wait(seen))
            try:
                await asyncio.wait({request, reconnected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in (request, reconnected):
                    pending.cancel()
            if not request.done() or request.cancelled():
                log.info("NATS reconnected while %s waited for its reply: sending it again", subject)
                continue
            try:
                msg = request.result()
            except (NatsTimeout, asyncio.TimeoutError):
                raise TransientError(f"no reply on {subject} within {timeout:.0f}s") from None
            except NoRespondersError:
                raise TransientError(f"nothing answers on {subject}") from None
            return _reply(msg.data, subject)


class HttpTransport(Transport):
    """A webhook: the contract's method, URL, headers and body (templates; the default body is the step
    as JSON), its secrets read at send time, an optional HMAC signature, and `Idempotency-Key`.
    No secret's value leaves here in an error or a result: a target that echoes one is scrubbed."""

    def __init__(self, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time):
        self.environ = os.environ if environ is None else environ
        self.clock = clock

    async def send(self, contract, step, timeout):
        spec = contract.executor
        try:
            secrets = read_secrets(spec.secrets, self.environ)
            request = render_request(spec, step_variables(step.action, step.target, step.params, step.incident_id,
                                                          step.key, step.kind), secrets, self.clock())
        except RequestError as exc:
            raise PermanentError(f"{contract.action} ({contract.source}): {exc}") from None
        try:
            return scrub(await self._exchange(request, step, timeout), secrets)
        except (TransientError, PermanentError) as exc:
            raise type(exc)(scrub(str(exc), secrets)) from None

    async def _exchange(self, request: HttpRequest, step: Step, timeout: float) -> dict[str, Any]:
        url = request.url
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.request(request.method, url, content=request.body,
                                                headers=inject({**request.headers, "Idempotency-Key": step.key}))
        except httpx.TimeoutException:
            raise TransientError(f"{url} did not answer within {timeout:.0f}s") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{url}: {exc}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"{url} answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentError(f"{url} answered {response.status_code}: {response.text[:200]}")
        return _reply(response.content or b'{"ok": true}', url)


class CommandTransport(Transport):
    """A local program from an allowlist, run as an argument list, never through a shell."""

    def __init__(self, allowlist: Sequence[str]):
        self.allowlist = set(allowlist)

    async def send(self, contract, step, timeout):
        argv = [part.format(action=step.action, target=step.target) for part in contract.executor.argv]
        if argv[0] not in self.allowlist:
            raise PermanentError(f"{argv[0]} is not in the command allowlist (RTEM_COMMAND_ALLOWLIST)")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"RTEM_IDEMPOTENCY_KEY": step.key, "PATH": "/usr/bin:/bin"})
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(step.params).encode()), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            raise TransientError(f"{argv[0]} ran past {timeout:.0f}s") from None
        if proc.returncode != 0:
            raise PermanentError(f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[:200]}")
        return {"ok": True, "result": {"stdout": out.decode(errors="replace")[:2000]}}


def _reply(data: bytes, where: str) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except ValueError:
        raise PermanentError(f"{where} answered something that is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise PermanentError(f"{where} answered without an 'ok' field")
    return reply


class Executors:
    """Runs steps through the transport their contract names, with retries and per-target breakers."""

    def __init__(self, transports: Mapping[str, Transport], policy: RetryPolicy | None = None,
                 breaker_threshold: int = 3, breaker_cooldown_s: float = 30.0,
                 on_breaker: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.transports = dict(transports)
        self.policy = policy or RetryPolicy()
        self.breakers: dict[str, CircuitBreaker] = {}
        self._threshold, self._cooldown, self._clock = breaker_threshold, breaker_cooldown_s, clock
        self.on_breaker = on_breaker

    def breaker(self, target: str) -> CircuitBreaker:
        if target not in self.breakers:
            self.breakers[target] = CircuitBreaker(target, self._threshold, self._cooldown, clock=self._clock)
        return self.breakers[target]

    async def run(self, contract: ActionContract, step: Step) -> Outcome:
        started = time.monotonic()
        with tracer().start_as_current_span(f"action.{step.kind}", attributes={
                "rtem.action": step.action, "rtem.target": step.target, "rtem.incident": step.incident_id,
                "rtem.idempotency_key": step.key}) as span:
            outcome = await self._run(contract, step)
            span.set_attribute("rtem.ok", outcome.ok)
        metrics.ACTIONS.labels(action=step.action, kind=step.kind, ok=str(outcome.ok).lower()).inc()
        metrics.ACTION_LATENCY.labels(action=step.action).observe(time.monotonic() - started)
        return outcome

    async def _run(self, contract: ActionContract, step: Step) -> Outcome:
        transport = self.transports.get(contract.executor.kind)
        if transport is None:
            return Outcome(False, error=f"no {contract.executor.kind} executor is configured")
        breaker = self.breaker(step.target)
        try:
            trial = breaker.before_call()
        except BreakerOpen as exc:
            return Outcome(False, error=str(exc), breaker_open=True)
        # A half-open trial is one call; and no retry once another step has opened the breaker.
        retrying = self.policy.retrying_async((TransientError,), unless=lambda _: breaker.state != CLOSED)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    reply = await transport.send(contract, step, contract.timeout_s)
        except TransientError as exc:
            return self._failed(breaker, step, str(exc), attempts, retryable=True)
        except PermanentError as exc:
            return self._failed(breaker, step, str(exc), attempts, retryable=False)
        except BaseException:  # cancelled, or a transport's bug: no verdict on the target, but end the trial
            breaker.release(trial)
            raise
        if reply.get("ok"):
            breaker.success()
            return Outcome(True, result=reply.get("result") or {}, attempts=attempts)
        return self._failed(breaker, step, str(reply.get("error") or "the target refused"), attempts, retryable=False)

    def _failed(self, breaker: CircuitBreaker, step: Step, error: str, attempts: int, retryable: bool) -> Outcome:
        before = breaker.state
        breaker.failure()
        opened = breaker.state == OPEN
        if opened and before != OPEN and self.on_breaker:
            self.on_breaker(step.target, error)
        return Outcome(False, error=error, attempts=attempts, retryable=retryable, breaker_open=opened)
