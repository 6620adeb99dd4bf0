"""The puller (bus/_pull.py) against a real nats-server: batches taken as they arrive, the next batch
always asked for, requests that end (expired, or lost) asked again, nats-py's byte count kept right, and
what was delivered but never taken given back."""

from __future__ import annotations

import asyncio
import json

import pytest

from bus import EVENTS
from bus._pull import GRACE_S, Puller, deliveries
from bus._streams import triage_consumer
from tests.live import sample

pytestmark = pytest.mark.integration


async def publish(bus, count: int, prefix: str = "e") -> None:
    report = await bus.publish_lines([json.dumps(sample(f"{prefix}{i}", "cartservice-0", i)).encode()
                                      for i in range(count)])
    assert report.published == count


async def consumer(bus, name: str = "pulled") -> str:
    await bus.js.add_consumer(EVENTS, config=triage_consumer(bus.settings, name))
    return name


async def take_all(puller: Puller, count: int, timeout: float = 5.0, batches: list | None = None) -> list:
    taken: list = []
    async with asyncio.timeout(timeout):
        while len(taken) < count:
            batch = await puller.take(1.0)
            taken += batch
            if batches is not None:
                batches.append(len(batch))
    return taken


async def test_batches_come_as_they_are_queued_and_the_next_is_always_asked_for(bus):
    await publish(bus, 50)
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=16)
    try:
        sizes: list[int] = []
        taken = await take_all(puller, 50, batches=sizes)
        assert len(taken) == 50 and max(sizes) <= 16
        assert [json.loads(m.data)["id"] for m in taken] == [f"e{i}" for i in range(50)], "in stream order"
        assert puller.owed >= 16, "a batch is asked for while this one is handled"
        assert puller._sub._pending_size == 0, "nats-py's byte count goes down as messages are taken"
        for msg in taken:
            await msg.ack()
    finally:
        assert await puller.close() == []


async def test_a_take_returns_at_most_a_batch(bus):
    await publish(bus, 40)
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=8)
    try:
        first = await puller.take(1.0)  # asks for two batches, returns at most one
        assert 1 <= len(first) <= 8
        async with asyncio.timeout(5.0):  # the rest of what was asked for arrives and is queued
            while puller._queue.qsize() < 16 - len(first):
                await asyncio.sleep(0.02)
    finally:
        left = await puller.close()
    assert 0 < len(left) <= 16 - len(first), "what arrived but was not taken is given back, no more than asked"


async def test_an_expired_request_is_asked_again(bus):
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=4, expires_s=0.2)
    try:
        assert await puller.take(0.6) == [], "nothing published"
        assert await puller.take(0.1) == []  # the expiry (a 408 status) is read, not returned
        await publish(bus, 3)
        taken = await take_all(puller, 3)  # served by a request asked after the first one expired
        assert len(taken) == 3
    finally:
        await puller.close()


async def test_a_request_whose_end_never_came_is_forgotten_and_asked_again(bus):
    now = [0.0]
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=4, clock=lambda: now[0])
    try:
        await puller.take(0.05)
        assert puller.owed == 8
        # As if the connection dropped: the server's requests are gone, no status came. Past their
        # expiry and the grace, the puller stops counting on them.
        puller._requests[0].owed = 5  # some were served, but the end never arrived
        now[0] += 5.0 + GRACE_S + 0.1
        await puller.take(0.05)
        assert len(puller._requests) == 1 and puller.owed == 8, "forgotten, and two batches asked anew"
    finally:
        await puller.close()


async def test_requests_made_before_a_reconnect_are_asked_again_at_once(bus):
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=4)
    try:
        await puller.take(0.05)
        puller._requests[0].owed = 3  # as if the server had dropped them with the connection
        bus.nc.stats["reconnects"] += 1  # what nats-py counts when it is connected again
        await puller.take(0.05)
        assert len(puller._requests) == 1 and puller.owed == 8
    finally:
        await puller.close()


async def test_a_consumer_that_is_gone_is_an_error_not_a_loop_of_requests(bus):
    from nats.js.errors import APIError

    name = await consumer(bus, "doomed")
    puller = await Puller.open(bus.nc, EVENTS, name, batch=4)
    try:
        assert await puller.take(0.1) == []
        await bus.js.delete_consumer(EVENTS, name)
        with pytest.raises(APIError):
            async with asyncio.timeout(5):
                while True:  # the server ends the waiting requests (409), then none answers the next (503)
                    await puller.take(0.2)
    finally:
        await puller.close()


async def test_deliveries_reads_the_count_nats_py_would(bus):
    await publish(bus, 2)
    puller = await Puller.open(bus.nc, EVENTS, await consumer(bus), batch=2)
    try:
        first = await take_all(puller, 2)
        assert [deliveries(m) for m in first] == [m.metadata.num_delivered for m in first] == [1, 1]
        for msg in first:
            await msg.nak()
        again = await take_all(puller, 2)
        assert [deliveries(m) for m in again] == [m.metadata.num_delivered for m in again] == [2, 2]
        for msg in again:
            await msg.ack()
    finally:
        await puller.close()
