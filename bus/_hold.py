"""Holding a batch through an outage of what the handler records into, instead of failing its events.

A handler that cannot record events for a reason of its own rather than theirs (its database is down, the
worker lost its lease and may no longer write) raises `Unavailable`. Redelivering such a batch would spend
the events' deliveries on the outage: each redelivery counts towards `max_deliver`, so a database outage of
a few seconds would dead-letter healthy events, and the delays that grow with each delivery would bring
them back in no particular order. Instead the consumer keeps the batch in hand and tries the handler again,
telling the server every so often that the batch (and whatever it delivered behind it meanwhile) is still
being worked on (`+WPI`, "in progress", which restarts `ack_wait`), so nothing is redelivered while it
waits. When the handler takes the batch, the events have been delivered once. A consumer told to stop while
it holds gives the batch back (`nak`, one delivery spent), for whoever consumes next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from ._resilience import RetryPolicy

log = logging.getLogger("rtem.bus")

SAY_EVERY_S = 60.0  # how often a long outage is logged again


class Unavailable(Exception):
    """Raised by a consumer's handler that cannot record events now for a reason that is not the events'
    (its store is unreachable, its worker lost the right to write). The consumer holds the batch and tries
    again (`bus._hold`) instead of counting a failed delivery against each event."""


@dataclass
class Held:
    """How a held batch ended: `failures` as the handler returned them once it took the batch (None when
    the consumer was stopped first, or the handler failed otherwise: `error`), and the messages delivered
    behind the batch while it was held, taken off the puller so they too were kept in progress."""

    failures: Mapping[str, str] | None = None
    error: Exception | None = None
    behind: list[Msg] = field(default_factory=list)


async def hold(msgs: list[Msg], attempt: Callable[[], Awaitable[Mapping[str, str] | None]],
               take_queued: Callable[[], list[Msg]], *, stop: asyncio.Event | None, ack_wait_s: float,
               retry: RetryPolicy, reason: Unavailable) -> Held:
    """Keep `msgs` (and what arrives behind them) in progress and `attempt` the handler again, with the
    `retry` policy's growing intervals (at most a third of `ack_wait_s`, so the server hears of them in
    time), until it takes the batch, fails otherwise, or `stop` is set."""
    held = Held()
    started = time.monotonic()
    log.warning("the event handler cannot record a batch of %d now (%s); holding it and trying again",
                len(msgs), reason)
    tries, said = 0, started
    while True:
        tries += 1
        if time.monotonic() - said >= SAY_EVERY_S:
            said = time.monotonic()
            log.warning("still holding a batch of %d after %.0f s (%s)", len(msgs), said - started, reason)
        await _in_progress(msgs, held, take_queued)
        delay = min(retry.interval(tries), ack_wait_s / 3)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if stop.is_set():
                log.info("stopping while holding a batch of %d: it goes back for redelivery", len(msgs))
                return held
        await _in_progress(msgs, held, take_queued)  # again: the try itself may take a while (a connect timeout)
        try:
            held.failures = await attempt() or {}
        except Unavailable as still:
            reason = still
            continue
        except Exception as exc:  # noqa: BLE001 - the caller handles it as any handler failure
            held.error = exc
            return held
        log.info("the event handler took the held batch of %d after %.1f s (%d tries)", len(msgs),
                 time.monotonic() - started, tries)
        return held


async def _in_progress(msgs: list[Msg], held: Held, take_queued: Callable[[], list[Msg]]) -> None:
    """Tell the server the batch, and what it delivered behind it (taken now), is still being worked on."""
    held.behind += take_queued()
    for msg in (*msgs, *held.behind):
        await msg.in_progress()
