"""`Notifications`: one notice to every destination it names, each delivery retried, behind a breaker per
endpoint, with a timeout, and audited (`notification.sent` / `notification.failed`).

A failing destination never stops the others, and nothing here raises into the caller: an incident's
thread must not fail because Slack is down. No secret (a routing key, a signing key, a Slack webhook URL)
reaches a record or a log line: endpoints are named by their host, errors are scrubbed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bus import BreakerOpen, CircuitBreaker, RetryPolicy

from ..audit import AuditLog
from ..redact import redact_known
from ._destinations import Alertmanager, Destination, DestinationName, PagerDuty, Request, Slack, Webhook
from ._notice import Notice

log = logging.getLogger("rtem.notify")


@dataclass(frozen=True)
class Delivery:
    """What became of one notice at one endpoint."""

    destination: DestinationName
    endpoint: str  # the host, never the full URL (it may hold a secret)
    event: str
    incident_id: str
    ok: bool
    attempts: int
    http_status: int | None = None
    error: str | None = None
    breaker_open: bool = False


class _Transient(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Permanent(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Notifications:
    """The configured destinations by name, built once (`build_notifications`) and shared."""

    def __init__(self, destinations: Sequence[Destination], audit: AuditLog, *, retry: RetryPolicy,
                 timeout_s: float, breaker_failures: int = 5, breaker_reset_s: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.destinations = {d.name: d for d in destinations}
        self.audit = audit
        self.retry = retry
        self.timeout_s = timeout_s
        self.clock = clock
        self.breakers = {(d.name, url): CircuitBreaker(f"{d.name} {_host(url)}", breaker_failures, breaker_reset_s)
                         for d in destinations for url in d.endpoints}
        self._client: httpx.AsyncClient | None = None
        # httpx logs every request's URL at INFO: a Slack webhook's URL is its secret.
        self._redact = _Redact(tuple(s for d in destinations for s in d.secrets if s))
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).addFilter(self._redact)

    @property
    def configured(self) -> bool:
        return bool(self.destinations)

    def names(self) -> tuple[DestinationName, ...]:
        return tuple(self.destinations)

    async def notify(self, notice: Notice) -> list[Delivery]:
        """Send `notice` to its receivers (every configured destination when it names none), at once;
        never raises. A receiver named but not configured is logged and skipped."""
        wanted = [self.destinations[name] for name in self.destinations
                  if not notice.receivers or name in notice.receivers]
        for name in set(notice.receivers) - set(self.destinations):
            log.warning("incident %s: no notification destination %r is configured (configured: %s)",
                        notice.incident_id, name, ", ".join(self.destinations) or "none")
        sends = [self._deliver(d, url, notice) for d in wanted for url in d.endpoints]
        return list(await asyncio.gather(*sends)) if sends else []

    async def close(self) -> None:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).removeFilter(self._redact)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, destination: Destination, url: str, notice: Notice) -> Delivery:
        breaker = self.breakers[(destination.name, url)]
        attempts, status, error, opened = 0, None, None, False
        try:
            trial = breaker.before_call()
        except BreakerOpen as exc:
            error, opened = str(exc), True
        else:
            try:
                async for attempt in self.retry.retrying_async((_Transient,)):
                    with attempt:
                        attempts += 1
                        status = await self._post(destination.request(notice, url, self.clock()))
                breaker.success()
            except (_Transient, _Permanent) as exc:
                status, error = exc.status, str(exc)
                breaker.failure()
            except asyncio.CancelledError:
                breaker.release(trial)
                raise
            except Exception as exc:  # a bug in a payload builder must not stop the other destinations
                error = f"{type(exc).__name__}: {exc}"
                breaker.failure()
        delivery = Delivery(destination.name, _host(url), notice.event.value, notice.incident_id, error is None,
                            attempts, status, _scrub(error, destination, url), opened)
        self._record(delivery, breaker.state)
        return delivery

    async def _post(self, request: Request) -> int:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        try:
            response = await self._client.post(request.url, content=request.body, headers=request.headers)
        except httpx.TimeoutException:
            raise _Transient(f"no answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"answered HTTP {response.status_code}", response.status_code)
        if response.status_code >= 300:
            raise _Permanent(f"answered HTTP {response.status_code}: {response.text[:200]}", response.status_code)
        return response.status_code

    def _record(self, delivery: Delivery, breaker: str) -> None:
        inputs = {"destination": delivery.destination.value, "endpoint": delivery.endpoint, "event": delivery.event,
                  "attempts": delivery.attempts, "http_status": delivery.http_status}
        if delivery.ok:
            reasons = [f"{delivery.event} delivered to {delivery.destination} at {delivery.endpoint}"]
        else:
            reasons = [f"{delivery.event} to {delivery.destination} at {delivery.endpoint} failed after "
                       f"{delivery.attempts} attempt(s): {delivery.error}; the other destinations were still told "
                       f"(check the endpoint and its RTEM_* setting, docs/integrations.md)"]
            log.warning("incident %s: %s", delivery.incident_id, reasons[0])
        try:
            self.audit.append("notification.sent" if delivery.ok else "notification.failed",
                              incident_id=delivery.incident_id, node="notify", inputs=inputs,
                              decision={"ok": delivery.ok, "breaker": breaker, "breaker_open": delivery.breaker_open},
                              reasons=reasons)
        except Exception:  # the delivery happened (or not) either way; the log line says so
            log.exception("incident %s: recording a notification failed", delivery.incident_id)


class _Redact(logging.Filter):
    """Replaces secrets in a log record's message with `***` (the record still goes out)."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            scrubbed = redact_known(message, self.secrets, "***")
            if scrubbed != message:
                record.msg, record.args = scrubbed, ()
        return True


def build_notifications(settings, audit: AuditLog, *, clock: Callable[[], datetime] | None = None) -> Notifications:
    """The destinations `settings` configure (none: `configured` is False). ValueError says which setting
    is incomplete or which secret file cannot be read."""
    destinations: list[Destination] = []
    if settings.alertmanager_url:
        urls = tuple(u.strip() for u in settings.alertmanager_url.split(",") if u.strip())
        destinations.append(Alertmanager(urls, settings.alertmanager_refresh_s))
    if settings.webhook_url:
        secret = _secret(settings.webhook_secret, settings.webhook_secret_file, "RTEM_WEBHOOK_SECRET")
        if not secret:
            raise ValueError("RTEM_WEBHOOK_URL is set but the webhook has no signing key: set RTEM_WEBHOOK_SECRET_FILE "
                             "(or RTEM_WEBHOOK_SECRET) to a shared secret the receiver verifies with")
        destinations.append(Webhook(settings.webhook_url, secret))
    routing_key = _secret(settings.pagerduty_routing_key, settings.pagerduty_routing_key_file,
                          "RTEM_PAGERDUTY_ROUTING_KEY")
    if routing_key:
        destinations.append(PagerDuty(settings.pagerduty_url, routing_key))
    if settings.slack_webhook_url:
        destinations.append(Slack(settings.slack_webhook_url.get_secret_value()))
    retry = RetryPolicy(max_attempts=settings.notify_retry_attempts, initial_interval_s=settings.notify_retry_initial_s,
                        max_interval_s=8.0)
    return Notifications(destinations, audit, retry=retry, timeout_s=settings.notify_timeout_s,
                         breaker_failures=settings.notify_breaker_failures,
                         breaker_reset_s=settings.notify_breaker_reset_s,
                         **({"clock": clock} if clock else {}))


def _secret(value, path: Path | None, variable: str) -> str | None:
    """A secret from its file (which wins) or its variable; whitespace around it is not part of it."""
    if path is not None:
        try:
            return Path(path).read_text("utf-8").strip() or None
        except OSError as exc:
            raise ValueError(f"{variable}_FILE={path}: cannot read it ({exc.strerror}); fix the path or "
                             f"its permissions") from None
    return value.get_secret_value().strip() or None if value is not None else None


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"


def _scrub(error: str | None, destination: Destination, url: str) -> str | None:
    """An error without the destination's secrets or its full URL (a path may hold a token)."""
    return None if error is None else redact_known(error, (*destination.secrets, url), "***")
