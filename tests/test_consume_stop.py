"""A consumer that stops (its worker lost the leader lease, or `rtem run` stops) gives back the events that were
delivered to it but that it never handed to the handler: they come back at once, to whoever consumes next,
not after `ack_wait` (30 s). CI once saw a PostgreSQL outage leave five events waiting that long
(tests/test_postgres_restart.py): the pull request of the consumer's last fetch had delivered them to its
subscription after that fetch returned, and a stopping consumer makes no next fetch to take them."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from bus import Bus
from tests.live import anomaly

pytestmark = pytest.mark.integration

HANDLED_FIRST = [anomaly(f"first{i}", "cartservice-0", i) for i in range(3)]
LATE = [anomaly(f"late{i}", "cartservice-1", 10 + i) for i in range(3)]


def publish_elsewhere(url: str, events: list[dict]) -> None:
    """Publish from another thread and connection, while this test's event loop is busy."""
    async def publish() -> None:
        other = await Bus.connect(url)
        try:
            await other.publish_lines([json.dumps(e).encode() for e in events])
        finally:
            await other.close()
    asyncio.run(publish())


async def test_events_delivered_to_a_stopping_consumer_come_back_at_once(nats_server, bus):
    await bus.publish_lines([json.dumps(e).encode() for e in HANDLED_FIRST])
    first: list[str] = []

    async def record(events):
        first.extend(e.id for e in events)

    stop = asyncio.Event()
    consuming = asyncio.create_task(bus.consume(record, stop=stop, fetch_timeout=0.5))
    deadline = time.monotonic() + 10
    while len(first) < len(HANDLED_FIRST) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(first) == sorted(e["id"] for e in HANDLED_FIRST)
    await asyncio.sleep(0.1)  # its next fetch's pull request now waits on the server for more

    # The consumer is told to stop while its event loop is busy (as a database that does not answer keeps
    # it, in triage) and events arrive: the waiting pull request delivers them to the subscription, and
    # the fetch times out before it looks. Stopping, the consumer fetches no more.
    stop.set()
    publisher = threading.Thread(target=publish_elsewhere, args=(nats_server.url, LATE))
    publisher.start()
    publisher.join()
    time.sleep(0.6)  # noqa: ASYNC251 - blocking the loop on purpose, past the fetch's timeout
    stats = await consuming
    assert stats.delivered == len(HANDLED_FIRST), "the late events never reached the handler"

    # The next consumer gets them at once, and only them: what was handled stays acked.
    second: list[str] = []

    async def record_again(events):
        second.extend(e.id for e in events)

    await asyncio.wait_for(bus.consume(record_again, until_drained=True, fetch_timeout=0.2), 10)
    assert sorted(second) == sorted(e["id"] for e in LATE)
    assert await bus.backlog() == (0, 0)


async def test_an_event_on_its_last_delivery_that_a_stopping_consumer_never_handled_is_dead_lettered(nats_server,
                                                                                                     bus):
    """Nak'd on its last allowed delivery, the server would never deliver it again: it goes to the DLQ."""
    from bus import BusSettings

    once = await Bus.connect(nats_server.url, BusSettings(max_deliver=1))
    try:
        await once.publish_lines([json.dumps(e).encode() for e in HANDLED_FIRST])
        first: list[str] = []

        async def record(events):
            first.extend(e.id for e in events)

        stop = asyncio.Event()
        consuming = asyncio.create_task(once.consume(record, consumer="once", stop=stop, fetch_timeout=0.5))
        deadline = time.monotonic() + 10
        while len(first) < len(HANDLED_FIRST) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        stop.set()
        publisher = threading.Thread(target=publish_elsewhere, args=(nats_server.url, LATE))
        publisher.start()
        publisher.join()
        time.sleep(0.6)  # noqa: ASYNC251 - as above: the late events reach the subscription, not the handler
        await consuming
        dead = await once.dead_letters()
        assert sorted(d.event_id for d in dead) == sorted(e["id"] for e in LATE)
        assert all("stopped before handling it" in d.reason for d in dead), dead
    finally:
        await once.close()
