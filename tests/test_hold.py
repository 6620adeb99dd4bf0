"""A handler that cannot record anything for a while (its database is down: it raises `bus.Unavailable`) has
its batch held, not failed (bus/_hold.py): the consumer keeps the batch, and what was delivered behind it, in
progress on the server and tries again, so an outage longer than `ack_wait` spends no delivery, dead-letters
nothing and keeps the events in order. A consumer stopped while it holds gives everything back at once."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bus import Bus, BusSettings, RetryPolicy, Unavailable
from tests.live import sample

SHORT = BusSettings(ack_wait_s=1.0, max_deliver=2, redelivery=RetryPolicy(initial_interval_s=0.1, backoff=2.0,
                                                                         max_interval_s=1.0))
EVENTS = [sample(f"e{i:02d}", "cartservice-0", i) for i in range(30)]


async def publish(bus: Bus, events: list[dict] = EVENTS) -> None:
    report = await bus.publish_lines([json.dumps(e).encode() for e in events])
    assert report.published == len(events)


@pytest.mark.integration
async def test_an_outage_longer_than_ack_wait_spends_no_delivery_and_loses_nothing(nats_server, bus):
    short = await Bus.connect(nats_server.url, SHORT)
    few = EVENTS[:5]  # fewer than a batch: the puller's requests still wait on the server for more, and
    # would take the server's redelivery of a batch whose ack_wait ran out, had it not heard of its progress
    try:
        await publish(short, few)
        recorded: list[str] = []
        down_until = time.monotonic() + 3.5  # three and a half times ack_wait

        async def record(events):
            if time.monotonic() < down_until:
                raise Unavailable("the database is down")
            recorded.extend(e.id for e in events)

        stats = await asyncio.wait_for(short.consume(record, batch=8, until_drained=True, fetch_timeout=0.2), 20)
        assert recorded == [e["id"] for e in few], "each once, in the order published"
        assert stats.held >= 1 and stats.redelivered == 0, "held in progress: the server redelivered nothing"
        assert stats.failed == 0 and await short.dead_letters() == []
        assert await short.backlog() == (0, 0)
    finally:
        await short.close()


@pytest.mark.integration
async def test_a_consumer_stopped_while_it_holds_gives_the_batch_back_at_once(nats_server, bus):
    await publish(bus)  # ack_wait is the default 30 s: a batch not given back would wait that long
    stop = asyncio.Event()
    tried = asyncio.Event()

    async def down(events):
        tried.set()
        raise Unavailable("this worker lost its lease")

    first = asyncio.create_task(bus.consume(down, batch=8, stop=stop, fetch_timeout=0.2))
    await asyncio.wait_for(tried.wait(), 10)
    await asyncio.sleep(0.5)  # it holds, and the puller's next batches arrive behind the held one
    stop.set()
    stats = await asyncio.wait_for(first, 10)
    assert stats.held == 1 and stats.processed == 0

    recorded: list[str] = []

    async def record(events):
        recorded.extend(e.id for e in events)

    again = await asyncio.wait_for(bus.consume(record, until_drained=True, fetch_timeout=0.2), 10)
    assert sorted(recorded) == sorted(e["id"] for e in EVENTS), "everything comes back, well before ack_wait"
    # what came back: the held batch, and what the puller had asked for behind it (two batches at most)
    assert stats.delivered <= again.redelivered <= 3 * 8
    assert await bus.dead_letters() == []


@pytest.mark.integration
async def test_a_handler_failing_otherwise_after_an_outage_is_handled_as_any_failure(nats_server, bus):
    short = await Bus.connect(nats_server.url, SHORT)
    try:
        await publish(short)
        calls = 0

        async def broken(events):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Unavailable("the database is down")
            raise ValueError("cannot take these")

        stats = await asyncio.wait_for(short.consume(broken, batch=64, until_drained=True, fetch_timeout=0.2), 30)
        assert stats.held == 1 and stats.failed == len(EVENTS), "redelivered, then dead-lettered, with the reason"
        letters = await short.dead_letters()
        assert len(letters) == len(EVENTS) and "cannot take these" in letters[0].reason
    finally:
        await short.close()
