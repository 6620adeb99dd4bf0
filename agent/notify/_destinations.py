"""The four destinations and how each turns a `Notice` into HTTP requests (one per endpoint).

A destination knows its endpoints and its secrets, never how to retry: that is `Notifications`' job.
`secrets` lists what must never reach a log line or an audit record (a Slack webhook URL is one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from .. import signing
from ._notice import Notice
from ._payloads import alertmanager_alerts, pagerduty_event, slack_message, webhook_body

JSON = {"Content-Type": "application/json"}


class DestinationName(StrEnum):
    ALERTMANAGER = "alertmanager"
    WEBHOOK = "webhook"
    PAGERDUTY = "pagerduty"
    SLACK = "slack"


DIRECT = (DestinationName.WEBHOOK, DestinationName.PAGERDUTY, DestinationName.SLACK)  # without Alertmanager


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Destination(Protocol):
    name: DestinationName
    endpoints: tuple[str, ...]  # one breaker each: an HA pair's members fail on their own
    secrets: tuple[str, ...]

    def request(self, notice: Notice, endpoint: str, now: datetime) -> Request: ...


@dataclass(frozen=True)
class Alertmanager:
    """Alertmanager's v2 API; with an HA pair every member is posted to (they gossip, and deduplicate)."""

    endpoints: tuple[str, ...]
    refresh_s: float
    name: DestinationName = DestinationName.ALERTMANAGER
    secrets: tuple[str, ...] = ()

    def request(self, notice: Notice, endpoint: str, now: datetime) -> Request:
        body = json.dumps(alertmanager_alerts(notice, now, self.refresh_s)).encode()
        return Request(endpoint.rstrip("/") + "/api/v2/alerts", body, JSON)


@dataclass(frozen=True)
class Webhook:
    """Any HTTP receiver: the notice as JSON, signed (agent/signing.py) so the receiver can trust it."""

    url: str
    secret: str
    name: DestinationName = DestinationName.WEBHOOK

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.secret,)

    def request(self, notice: Notice, endpoint: str, now: datetime) -> Request:
        body = webhook_body(notice)
        return Request(endpoint, body, {**JSON, **signing.sign(self.secret.encode(), body, int(now.timestamp()))})


@dataclass(frozen=True)
class PagerDuty:
    url: str
    routing_key: str
    name: DestinationName = DestinationName.PAGERDUTY

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.routing_key,)

    def request(self, notice: Notice, endpoint: str, now: datetime) -> Request:
        return Request(endpoint, json.dumps(pagerduty_event(notice, self.routing_key, now)).encode(), JSON)


@dataclass(frozen=True)
class Slack:
    """A Slack incoming webhook (or a compatible one: Mattermost, Rocket.Chat). The URL is the secret."""

    url: str
    name: DestinationName = DestinationName.SLACK

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.url, urlsplit(self.url).path)  # the path is the token: a 404 page may echo it alone

    def request(self, notice: Notice, endpoint: str, now: datetime) -> Request:
        return Request(endpoint, json.dumps(slack_message(notice)).encode(), JSON)
