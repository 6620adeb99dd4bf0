"""The JetStream streams, the triage consumer and the bus's backoffs rtem relies on, declared as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nats.js import api

from ._resilience import RetryPolicy

EVENTS = "EVENTS"
DLQ = "DLQ"
AUDIT = "AUDIT"
EVENTS_SUBJECTS = "rtem.events.>"
DLQ_SUBJECTS = "rtem.dlq.>"
AUDIT_SUBJECTS = "rtem.audit.>"
TRIAGE = "triage"


@dataclass(frozen=True)
class NatsAuth:
    """How rtem authenticates to NATS: at most one of a credentials file (JWT + nkey), an nkey seed
    file, a token or a user and password; TLS with a CA and, for mutual TLS, a client certificate."""

    creds: Path | None = None
    nkey_seed: Path | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


# EVENTS' default bounds: about 2 million events of ~500 bytes. JetStream reserves max_bytes against the
# server's storage when a stream is made (the embedded server's is 75 % of the free disk, docs/nats.md).
EVENTS_MAX_BYTES = 1 << 30
EVENTS_MAX_MSGS = 2_000_000


@dataclass(frozen=True)
class BusSettings:
    """What the streams and the consumer are made with; `agent.config.Settings` fills it."""

    duplicate_window_s: float = 120.0
    max_ack_pending: int = 2048
    max_deliver: int = 5
    ack_wait_s: float = 30.0
    events_max_age_s: float = 7 * 24 * 3600.0
    # EVENTS' bounds (-1: none). A full EVENTS refuses new publishes (DiscardPolicy.NEW), visibly to the
    # producer, rather than drop events triage has not read; `Bus.trim_events` keeps it from filling up.
    events_max_bytes: int = EVENTS_MAX_BYTES
    events_max_msgs: int = EVENTS_MAX_MSGS
    # Acknowledged events younger than this stay on EVENTS when it is trimmed (`bus/_trim.py`).
    events_keep_s: float = 3600.0
    dlq_max_age_s: float = 14 * 24 * 3600.0
    audit_max_age_s: float = 400 * 24 * 3600.0
    # An event dated more than this after the moment it is consumed is dead-lettered: one clock far in
    # the future must not move event time (the watermark) there.
    max_future_skew_s: float = 300.0
    # Copies JetStream keeps of each stream: 1 on one server, 3 on a cluster of three (at most its size).
    replicas: int = 1
    auth: NatsAuth = field(default_factory=NatsAuth)
    # An event whose publish ack was lost to a reconnect is published again, one by one, as this says.
    publish_retry: RetryPolicy = RetryPolicy(max_attempts=10, initial_interval_s=0.2, backoff=2.0, max_interval_s=3.0)
    # The delay before redelivering an event the handler failed on: interval(n) after delivery n.
    # Only the intervals count here; `max_deliver` says how many deliveries there are.
    redelivery: RetryPolicy = RetryPolicy(initial_interval_s=0.4, backoff=2.0, max_interval_s=5.0)
    reconnect_wait_s: float = 0.25  # between attempts to reconnect to NATS (which never stop)


# Byte ceilings, so a flood cannot fill the disk before max_age would have freed it; the oldest messages go
# first (DiscardPolicy.OLD). JetStream reserves max_bytes against the server's storage when a stream is made,
# so they stay modest: a laptop's embedded server must still start. A dead letter is usually a few KiB (at
# most one event, 1 MiB); a decision record 1–3 KiB, and a busy year writes some 10^5, so 1 GiB holds
# several years. EVENTS is bounded too (BusSettings.events_max_*), but full it refuses new events instead
# (DiscardPolicy.NEW): dropping the oldest would lose events triage has not read yet, silently, whereas a
# refused publish is an error its producer sees and can retry. What triage has acknowledged is trimmed
# (`bus/_trim.py`), so EVENTS fills only when rtem falls behind.
DLQ_MAX_BYTES = 256 << 20
AUDIT_MAX_BYTES = 1 << 30


def stream_configs(settings: BusSettings) -> list[api.StreamConfig]:
    """The streams as rtem wants them; `Bus.ensure_streams` creates them or brings existing ones to this."""
    return [
        api.StreamConfig(name=EVENTS, subjects=[EVENTS_SUBJECTS], storage=api.StorageType.FILE,
                         num_replicas=settings.replicas, retention=api.RetentionPolicy.LIMITS,
                         duplicate_window=settings.duplicate_window_s, max_age=settings.events_max_age_s,
                         max_bytes=settings.events_max_bytes, max_msgs=settings.events_max_msgs,
                         discard=api.DiscardPolicy.NEW, description="rtem input events (CloudEvents JSON)"),
        api.StreamConfig(name=DLQ, subjects=[DLQ_SUBJECTS], storage=api.StorageType.FILE,
                         num_replicas=settings.replicas, retention=api.RetentionPolicy.LIMITS,
                         max_age=settings.dlq_max_age_s, max_bytes=DLQ_MAX_BYTES, discard=api.DiscardPolicy.OLD,
                         description="events rtem could not use, with the reason in headers"),
        api.StreamConfig(name=AUDIT, subjects=[AUDIT_SUBJECTS], storage=api.StorageType.FILE,
                         num_replicas=settings.replicas, retention=api.RetentionPolicy.LIMITS,
                         max_age=settings.audit_max_age_s, max_bytes=AUDIT_MAX_BYTES,
                         discard=api.DiscardPolicy.OLD,
                         description="rtem decision records, as written to the audit log"),
    ]


# The server redelivers without limit: `max_deliver` is rtem's policy, applied where rtem sees a delivery
# (`bus._consume`). A server-side limit counts deliveries rtem never received too (a fetch answer lost with
# a killed server or a dropped connection), and once reached the server skips the message for good, with
# no DLQ entry: an accepted event lost without a word.
UNLIMITED = -1


def triage_consumer(settings: BusSettings, name: str = TRIAGE) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=name, durable_name=name, filter_subject=EVENTS_SUBJECTS,
        ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s, max_deliver=UNLIMITED,
        max_ack_pending=settings.max_ack_pending,
    )


def event_subject(event_type: str | None) -> str:
    """`rtem.events.<type>`, with characters NATS treats specially replaced."""
    if not event_type:
        return "rtem.events.unparsed"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in event_type).strip(".") or "unknown"
    return f"rtem.events.{safe}"
