"""Consuming the EVENTS stream: batches fetched from the durable pull consumer, the envelope checked
(what is not an rtem event goes to the DLQ with the reason), the handler given the valid events, and
acks after it; what it could not process is redelivered with backoff, then dead-lettered. A handler that
cannot record anything now (its store is down: `Unavailable`) has its batch held, not failed (`bus._hold`).
A consumer that stops gives back (naks) what it was delivered but never handled, so nothing waits out
ack_wait.

`Consuming` is a part of `Bus` (it uses its JetStream context, settings and `dead_letter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from ._envelope import Event, InvalidEvent, dated_ahead, parse_event
from ._hold import Unavailable, hold
from ._pull import Puller, deliveries
from ._streams import EVENTS, TRIAGE, triage_consumer

log = logging.getLogger("rtem.bus")

Handler = Callable[[list[Event]], Awaitable[Mapping[str, str] | None]]
"""Gets a batch of valid events; returns {event id: reason} for those it could not process."""


@dataclass
class ConsumeStats:
    delivered: int = 0
    processed: int = 0
    invalid: int = 0
    failed: int = 0
    redelivered: int = 0
    batches: int = 0
    held: int = 0  # batches held through an outage of the handler's store (`bus._hold`)


# Deliveries, in multiples of `max_deliver`, after which an event that never got through the handler goes
# to the DLQ before reaching it again: twice the policy leaves room for deliveries lost in transit.
STUCK_AFTER = 2


class Consuming:
    async def backlog(self, consumer: str = TRIAGE) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered but not acked) for the consumer."""
        info = await self.js.consumer_info(EVENTS, consumer)
        return info.num_pending, info.num_ack_pending

    async def consume(self, handler: Handler, *, consumer: str = TRIAGE, batch: int = 256,
                      stop: asyncio.Event | None = None, until_drained: bool = False,
                      fetch_timeout: float = 0.5, max_event_bytes: int | None = None,
                      on_batch: Callable[[ConsumeStats], None] | None = None) -> ConsumeStats:
        """Pull batches from the durable consumer and hand valid events to `handler`.

        Acks only after the handler returned (the handler records events durably before it
        returns), so a crash at any point redelivers instead of losing. With `until_drained`, stops
        once nothing is pending or unacked; otherwise runs until `stop` is set, after the batch in hand.
        Events delivered to it that it never handed to the handler are nak'd on the way out, so another
        consumer gets them at once rather than after `ack_wait` (`_give_back`).
        """
        wanted = triage_consumer(self.settings, consumer)
        info = await self._consumer_info(consumer)
        if info is None or info.config.max_deliver != wanted.max_deliver:
            # new, or made by an rtem that let the server stop redelivering (`bus._streams.UNLIMITED` says why)
            await self.js.add_consumer(EVENTS, config=wanted)
        stats = ConsumeStats()
        limit_kw = {"max_bytes": max_event_bytes} if max_event_bytes else {}
        puller = await Puller.open(self.nc, EVENTS, consumer, min(batch, self.settings.max_ack_pending))
        behind: list[Msg] = []  # delivered while a batch was held (an outage), taken off the puller: next
        try:
            while True:
                if behind:
                    msgs, behind = behind[:puller.batch], behind[puller.batch:]
                else:
                    msgs = await puller.take(fetch_timeout)
                stopping = bool(stop and stop.is_set())
                if not msgs:
                    if stopping or (until_drained and await self._drained(consumer)):
                        break
                    continue
                behind += await self._handle_batch(msgs, handler, stats, limit_kw, puller, stop)
                if on_batch:
                    on_batch(stats)
                if stopping or (stop and stop.is_set() and behind):
                    break
        finally:
            await _give_back(puller, behind, self.settings.max_deliver, self._never_handled)
        return stats

    async def _never_handled(self, msg: Msg) -> None:
        """An event delivered `max_deliver` times to consumers that stopped before handling it: to the
        DLQ with that reason, not dropped."""
        delivered = deliveries(msg)
        await self.dead_letter(msg.data, f"delivered {delivered} times to consumers that stopped before "
                               "handling it", event_id=peek_id(msg.data), subject=msg.subject,
                               deliveries=delivered, kind="failed")
        await msg.term()

    async def _consumer_info(self, name: str):
        try:
            return await self.js.consumer_info(EVENTS, name)
        except NotFoundError:
            return None

    async def _drained(self, consumer: str) -> bool:
        await self.nc.flush()
        pending, unacked = await self.backlog(consumer)
        return pending == 0 and unacked == 0

    async def _handle_batch(self, msgs: list[Msg], handler: Handler, stats: ConsumeStats,
                            limit_kw: dict[str, int], puller: Puller, stop: asyncio.Event | None) -> list[Msg]:
        """Check, hand over and acknowledge one batch; the messages delivered behind it while it was held
        (`bus._hold`), to be handled next."""
        stats.batches += 1
        stats.delivered += len(msgs)
        valid: list[tuple[Msg, Event, int]] = []  # with how many times the server delivered it
        received = datetime.now(timezone.utc)  # the moment this batch is consumed
        for msg in msgs:
            delivered = deliveries(msg)
            if delivered > 1:
                stats.redelivered += 1
            try:
                event = parse_event(msg.data, **limit_kw)
            except InvalidEvent as bad:
                await self.dead_letter(msg.data, bad.reason, event_id=bad.event_id, subject=msg.subject,
                                       deliveries=delivered)
                await msg.ack()
                stats.invalid += 1
                continue
            ahead = dated_ahead(event, received, self.settings.max_future_skew_s)
            if ahead:  # never reaches the handler, so event time (the watermark) does not jump there
                await self.dead_letter(msg.data, ahead, event_id=event.id, subject=msg.subject,
                                       deliveries=delivered, kind="future")
                await msg.ack()
                stats.invalid += 1
                continue
            if delivered > STUCK_AFTER * self.settings.max_deliver:
                # the server redelivers without limit, so an event that crashes every consumer it reaches
                # (or whose deliveries keep getting lost) is bounded here: to the DLQ, with the reason
                await self.dead_letter(msg.data, f"delivered {delivered} times and never handled "
                                       "to completion (a consumer stopped or crashed on it each time)",
                                       event_id=event.id, subject=msg.subject, deliveries=delivered, kind="failed")
                await msg.term()
                stats.failed += 1
                continue
            valid.append((msg, event, delivered))
        if not valid:
            return []
        events = [event for _, event, _ in valid]
        behind: list[Msg] = []
        try:
            try:
                with _batch_span(valid[0][0].headers, len(valid)):
                    failures = await handler(events) or {}
            except Unavailable as outage:
                stats.held += 1
                held = await hold([msg for msg, _, _ in valid], lambda: handler(events), puller.take_queued,
                                  stop=stop, ack_wait_s=self.settings.ack_wait_s,
                                  retry=self.settings.redelivery, reason=outage)
                behind = held.behind
                if held.error is not None:
                    raise held.error
                if held.failures is None:  # stopped while holding: back to the server, one delivery spent
                    return [msg for msg, _, _ in valid] + behind
                failures = held.failures
        except Exception as exc:
            log.exception("event handler failed on a batch of %d", len(valid))
            if len(valid) > 1 and any(delivered > 1 for _, _, delivered in valid):
                # It failed before too: more likely one event the handler cannot take than a passing
                # outage. Halve the batch until the events that fail on their own are found, so they alone
                # are retried and dead-lettered, not every event delivered beside them.
                try:
                    failures = await _isolate(handler, events)
                except Unavailable as outage:  # the store went away meanwhile: each is retried as it is
                    failures = {event.id: f"handler unavailable: {outage}" for event in events}
            else:  # the first failure: every event is retried as it is (an outage passes)
                failures = {event.id: f"handler error: {type(exc).__name__}: {exc}" for event in events}
        if not failures:
            for msg, _, _ in valid:
                await msg.ack()  # a buffered publish each, sent together when the loop next writes
            stats.processed += len(valid)
            return behind
        for msg, event, delivered in valid:
            reason = failures.get(event.id)
            if reason is None:
                await msg.ack()
                stats.processed += 1
            elif delivered >= self.settings.max_deliver:
                await self.dead_letter(msg.data, f"failed {delivered} deliveries: {reason}",
                                       event_id=event.id, subject=msg.subject, deliveries=delivered, kind="failed")
                await msg.term()
                stats.failed += 1
            else:
                await msg.nak(delay=self.settings.redelivery.interval(delivered))
        return behind


async def _isolate(handler: Handler, events: list[Event]) -> dict[str, str]:
    """The failures of `events` handled in halves, recursively: the handler records a batch whole or not
    at all, so a half that succeeds is done, and a failing single event is the one to retry."""
    try:
        return await handler(events) or {}
    except Unavailable:
        raise  # not these events' failure: the whole batch is held (`_handle_batch`)
    except Exception as exc:
        if len(events) == 1:
            return {events[0].id: f"handler error: {type(exc).__name__}: {exc}"}
        middle = len(events) // 2
        return {**await _isolate(handler, events[:middle]), **await _isolate(handler, events[middle:])}


async def _give_back(puller: Puller, behind: list[Msg], max_deliver: int,
                     last: Callable[[Msg], Awaitable[None]]) -> None:
    """Close the puller, then nak what it was delivered but never handed to the handler (what is still
    queued, and `behind`: a held batch and what came behind it, see `bus._hold`), so the server
    redelivers it at once to whoever consumes next (this worker when it leads again, or another) instead
    of after `ack_wait`. What the handler got is not touched: it was acked once recorded, or nak'd with a
    delay when it failed.

    Such messages exist because the puller keeps the next batch asked for while one is handled (`Puller`):
    the server delivers it into the subscription's queue, and a consumer that stops takes no next batch.

    A message on its last allowed delivery (`max_deliver`) is handed to `last` instead: nak'd, the server
    would never deliver it again, and an accepted event would be dropped without a word."""
    unhandled = behind + await puller.close()
    for msg in unhandled:
        try:
            await (last(msg) if deliveries(msg) >= max_deliver else msg.nak())
        except Exception:  # noqa: BLE001 - the connection is gone: the server redelivers after ack_wait
            break
    if unhandled:
        log.info("gave back %d event(s) delivered but not handled, for redelivery at once", len(unhandled))


def _batch_span(headers, size: int):
    """A tracing span per batch that continues the producer's trace (W3C traceparent header)."""
    from opentelemetry import context, propagate, trace

    @contextlib.contextmanager
    def span():
        token = context.attach(propagate.extract(dict(headers or {})))
        try:
            with trace.get_tracer("rtem.bus").start_as_current_span("triage.batch", attributes={"rtem.events": size}):
                yield
        finally:
            context.detach(token)
    return span()


def peek_id(line: bytes) -> str | None:
    """The event id of a line that may not parse, for the DLQ's headers: a cheap look, not a parse."""
    match = line[:4096].split(b'"id"', 1)
    if len(match) < 2:
        return None
    rest = match[1].lstrip(b' :\t"')
    return rest.split(b'"', 1)[0].decode("utf-8", "replace")[:256] or None
