"""`Bus`: rtem's JetStream client. Connecting is `bus/_connect.py`; here: the streams (made, kept up
to date, a foreign one refused), publishing events with their id as `Nats-Msg-Id` (retried through
reconnects and leader elections; refused with a clear reason when EVENTS is full), dead-lettering with
the reason, and the AUDIT copy. Consuming is `bus/_consume.py` (`Consuming`), reading and redriving dead
letters `bus/_dlq.py`, trimming what triage acknowledged `bus/_trim.py`; all three are parts of `Bus`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ._connect import Reconnects, connect_nats
from ._dlq import HEADER_DELIVERIES, HEADER_EVENT_ID, HEADER_REASON, HEADER_SIZE, HEADER_SUBJECT, DeadLetterStore
from ._consume import Consuming, peek_id
from ._resilience import retry_async
from ._streams import (AUDIT, AUDIT_SUBJECTS, EVENTS, BusSettings, event_subject,
                       stream_configs)
from ._full import JetStream, full_reason, stream_full
from ._trim import Trimming

log = logging.getLogger("rtem.bus")

# Worth publishing again: the server did not answer in time, the connection is being re-established, or
# (on a cluster) the stream has no leader for a moment: just made, or electing one after a server died.
_PUBLISH_TRANSIENT = (NatsTimeout, asyncio.TimeoutError, nats.errors.ConnectionReconnectingError,
                      nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)


@dataclass
class PublishReport:
    lines: int = 0
    published: int = 0
    duplicates: int = 0
    rejected: int = 0  # not on EVENTS: too large for the bus (dead-lettered), or refused because EVENTS is full
    reasons: list[str] = field(default_factory=list)  # one per rejected line
    full: int = 0  # of `rejected`: refused because EVENTS is full; not dead-lettered, the producer retries them
    full_ids: list[str] = field(default_factory=list)  # their event ids (of the lines that had one)
    full_reason: str | None = None  # what `reasons` says of them


def _refuse_foreign(current: api.StreamConfig, wanted: api.StreamConfig) -> None:
    """An existing stream rtem would have to re-create to use: say so, rather than write where it should not."""
    differs = [f"{name} is {_shown(getattr(current, name))}, rtem needs {_shown(getattr(wanted, name))}"
               for name in ("subjects", "storage", "retention")
               if getattr(wanted, name) is not None and _shown(getattr(current, name)) != _shown(getattr(wanted, name))]
    if differs:
        raise OSError(f"JetStream stream {wanted.name} exists but is not rtem's as configured: {'; '.join(differs)}. "
                      f"If it is rtem's (made by hand or an older setup), move its messages and delete it (`nats "
                      f"stream rm {wanted.name}`), and rtem makes it anew; if another application owns it, give "
                      "rtem a server or account of its own")


def _shown(value) -> str:
    if isinstance(value, list):
        return ", ".join(value)
    return str(getattr(value, "value", value))


class Bus(Consuming, DeadLetterStore, Trimming):
    """A connection to NATS with rtem's streams; `await Bus.connect(url)` to get one. Reading and removing
    dead letters is `DeadLetterStore`'s (`_dlq.py`), trimming EVENTS `Trimming`'s (`_trim.py`)."""

    def __init__(self, nc: nats.NATS, settings: BusSettings, reconnects: Reconnects | None = None):
        self.nc = nc
        self.js = JetStream(nc)
        self.settings = settings
        self.reconnects = reconnects or Reconnects()

    @classmethod
    async def connect(cls, url: str, settings: BusSettings | None = None, *, name: str = "rtem",
                      give_up_s: float | None = None) -> Bus:
        """A bus on a connection as `bus._connect.connect_nats` makes it (credentials, a cluster's URLs, how
        long to try); `ensure_streams` makes or updates the streams on it."""
        settings = settings or BusSettings()
        nc, reconnects = await connect_nats(url, settings, name=name, give_up_s=give_up_s)
        return cls(nc, settings, reconnects)

    async def close(self, timeout: float = 10.0) -> None:
        """Drain (deliver what is pending, then close); with the server gone — the client reconnecting,
        or the drain not done within `timeout` — close at once: nothing pending can be delivered anyway."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except (asyncio.TimeoutError, nats.errors.Error):
            await self.nc.close()

    async def ensure_streams(self) -> None:
        """Create the streams, or bring an existing one's settings up to date — its retention limits
        (max_age, max_bytes) and replica count — logging what changed. Messages stay unless a new limit
        expires them. A stream rtem cannot use as it is (other subjects, another storage or retention
        kind: someone else's, or made by hand) raises OSError saying what differs and what to do; so
        does one the server will not give the limits or replicas asked for.

        A request that times out is made again (as publishes are): workers starting together on a new
        cluster all create replicated streams at once, and the cluster answers some of them late."""
        await retry_async(self._ensure_streams, self.settings.publish_retry, _PUBLISH_TRANSIENT)

    async def _ensure_streams(self) -> None:
        for config in stream_configs(self.settings):
            try:
                current = (await self.js.stream_info(config.name)).config
            except NotFoundError:
                current = None
            if current is not None:
                _refuse_foreign(current, config)
            try:
                if current is None:
                    await self.js.add_stream(config)
                    continue
                await self.js.update_stream(config)
            except nats.js.errors.APIError as exc:
                bound = ("RTEM_EVENTS_MAX_BYTES" if config.name == EVENTS else "the retention (RTEM_RETAIN_*)")
                raise OSError(f"JetStream refused stream {config.name} (max_age {config.max_age or 0:.0f}s, "
                              f"max_bytes {config.max_bytes or -1}, replicas {config.num_replicas}): "
                              f"{exc.description}; lower {bound} or the replicas "
                              "(RTEM_NATS_REPLICAS: at most the cluster's size), or give the server more "
                              "JetStream storage") from None
            changed = [f"{name} {_shown(getattr(current, name))} → {_shown(getattr(config, name))}"
                       for name in ("max_age", "max_bytes", "max_msgs", "discard", "num_replicas")
                       if getattr(config, name) is not None and getattr(current, name) != getattr(config, name)]
            if changed:
                log.info("stream %s updated: %s", config.name, ", ".join(changed))

    async def reset_streams(self) -> None:
        """Delete and recreate every stream: a fresh start for one replay (`rtem analyze --each`)."""
        for config in stream_configs(self.settings):
            try:
                await self.js.delete_stream(config.name)
            except NotFoundError:
                pass
        # The server may still be removing a deleted stream's files when it is created again ("error
        # creating store for stream"): try again for a moment before calling it refused.
        for attempt in range(10):
            try:
                return await self.ensure_streams()
            except OSError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.2)

    # -- publishing -------------------------------------------------------------------------------

    async def publish_lines(self, lines: Iterable[bytes],
                            progress: Callable[[PublishReport], None] | None = None) -> PublishReport:
        """Publish raw JSON lines as they are; the consumer validates them.

        A line too large for the server is dead-lettered here, since it cannot travel on the bus.
        The event id, when the line has one, becomes `Nats-Msg-Id`, so a resent event is one event.
        A line EVENTS refuses because it is full is counted in `rejected` and `full`, with the reason;
        it is not on the bus, and publishing it again later is safe (the id dedupes).
        """
        report = PublishReport()
        pending: list[tuple[asyncio.Future, str, bytes, dict[str, str] | None]] = []
        limit = self.nc.max_payload - 4096
        for line in lines:
            line = line.strip()
            if not line:
                continue
            report.lines += 1
            if len(line) > limit:
                reason = f"event is {len(line)} bytes, over the bus limit of {limit} bytes"
                await self.dead_letter(line, reason, event_id=peek_id(line), subject="rtem.events.unparsed")
                report.rejected += 1
                report.reasons.append(reason)
                continue
            event_id, event_type = _peek(line)
            headers = {"Nats-Msg-Id": event_id} if event_id else None
            subject = event_subject(event_type)
            pending.append((await self.js.publish_async(subject, line, headers=headers), subject, line, headers))
            if len(pending) >= 1000:
                await self._settle(pending, report)
                if progress:
                    progress(report)
        await self._settle(pending, report)
        if progress:
            progress(report)
        return report

    async def _settle(self, pending: list, report: PublishReport, timeout: float = 10.0) -> None:
        """Wait for JetStream's acks. An ack lost to a reconnect is never answered: such messages are
        published again, one by one and waiting; their Nats-Msg-Id makes the repeat harmless. A message
        EVENTS refused because it is full is not tried again here: it is counted as refused, with the reason."""
        done, _ = await asyncio.wait([future for future, *_ in pending], timeout=timeout) if pending else (set(), None)
        for future, subject, line, headers in pending:
            try:
                if future in done and future.exception() is None:
                    ack = future.result()
                elif future in done and stream_full(future.exception()):
                    raise future.exception()
                else:
                    future.cancel()
                    ack = await self._publish_retrying(subject, line, headers)
            except APIError as exc:
                if not stream_full(exc):
                    raise
                self._refused_full(report, exc, headers)
                continue
            if ack.duplicate:
                report.duplicates += 1
            else:
                report.published += 1
        pending.clear()

    def _refused_full(self, report: PublishReport, exc: APIError, headers: dict[str, str] | None) -> None:
        if report.full_reason is None:
            report.full_reason = full_reason(exc, self.settings)
            log.warning("%s: %s", EVENTS, report.full_reason)
        report.rejected += 1
        report.full += 1
        report.reasons.append(report.full_reason)
        if headers:
            report.full_ids.append(headers["Nats-Msg-Id"])

    async def _publish_retrying(self, subject: str, line: bytes, headers: dict[str, str] | None):
        return await retry_async(lambda: self.js.publish(subject, line, headers=headers, timeout=5),
                                 self.settings.publish_retry, _PUBLISH_TRANSIENT)

    async def dead_letter(self, data: bytes, reason: str, *, event_id: str | None = None,
                          subject: str | None = None, deliveries: int = 0, kind: str = "invalid") -> None:
        """Store bytes rtem could not use in the DLQ, with the reason; waits for JetStream's ack."""
        room = self.nc.max_payload - 8192
        headers = {
            HEADER_REASON: _header_value(reason),
            HEADER_SUBJECT: subject or "",
            HEADER_DELIVERIES: str(deliveries),
            HEADER_SIZE: str(len(data)),
        }
        if event_id:
            headers[HEADER_EVENT_ID] = _header_value(event_id)
        await self.js.publish(f"rtem.dlq.{kind}", data[:room], headers=headers)
        log.warning("dead-lettered %s event%s: %s", kind, f" {event_id}" if event_id else "", reason)

    async def publish_audit(self, record: Mapping[str, Any]) -> None:
        await self.js.publish(f"rtem.audit.{record['kind']}", json.dumps(record, default=str).encode(),
                              headers={"Nats-Msg-Id": f"audit-{record['seq']}-{record['hash'][:16]}"})

    async def audit_messages(self, timeout: float = 5.0) -> AsyncIterator[tuple[int, bytes]]:
        """(stream sequence, data) of every message on the AUDIT stream when called, oldest first, through
        an ordered consumer: what `rtem audit verify` compares the audit log with."""
        info = await self.js.stream_info(AUDIT)
        if not info.state.messages:
            return
        sub = await self.js.subscribe(AUDIT_SUBJECTS, stream=AUDIT, ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=timeout)
                yield msg.metadata.sequence.stream, msg.data
                if msg.metadata.sequence.stream >= info.state.last_seq:
                    return
        finally:
            await sub.unsubscribe()

    async def last_audit_seq(self) -> int:
        """The highest audit record seq already on the AUDIT stream (0 when empty)."""
        info = await self.js.stream_info(AUDIT)
        if not info.state.messages:
            return 0
        msg = await self.js.get_msg(AUDIT, info.state.last_seq)
        return int(json.loads(msg.data)["seq"])



def _peek(line: bytes) -> tuple[str | None, str | None]:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    event_id = doc.get("id") if isinstance(doc.get("id"), str) and doc.get("id") else None
    event_type = doc.get("type") if isinstance(doc.get("type"), str) else None
    return event_id, event_type


def _header_value(text: str) -> str:
    return " ".join(str(text).split())[:1024]
