"""The bus against a real nats-server: dead letters, duplicates, redelivery, backpressure settings."""

import asyncio
import json

import pytest

from bus import DLQ, EVENTS, Bus, BusSettings, EmbeddedNats
from tests.conftest import cloud_event

pytestmark = pytest.mark.integration


def line(event: dict) -> bytes:
    return json.dumps(event).encode()


GOOD = [line(cloud_event(f"e{i}", "cartservice-0", f"2022-03-20T00:36:0{i}.000Z")) for i in range(5)]


async def collect(bus, **kwargs):
    seen = []

    async def handler(events):
        seen.extend(events)

    stats = await bus.consume(handler, until_drained=True, fetch_timeout=0.2, **kwargs)
    return seen, stats


async def test_every_kind_of_bad_input_reaches_the_dlq_with_its_reason_and_bytes(bus):
    bad = {
        b"not json at all": "not JSON",
        line({**json.loads(GOOD[0]), "id": "no-time", "time": None} | {"time": "x"}): "RFC 3339",
        line({k: v for k, v in json.loads(GOOD[0]).items() if k != "subject"} | {"id": "no-subject"}): "'subject'",
        line(cloud_event("bad-sev", "a", "2022-03-20T00:36:00Z", severity="loud")): "'loud' is not one of",
        b"\xc3\x28 invalid utf-8": "not valid UTF-8",
    }
    report = await bus.publish_lines([GOOD[0], *bad, GOOD[1]])
    assert report.published == 2 + len(bad)
    seen, stats = await collect(bus)
    assert [e.id for e in seen] == ["e0", "e1"], "the pipeline keeps going past bad input"
    assert stats.invalid == len(bad)
    letters = await bus.dead_letters()
    assert len(letters) == len(bad)
    for letter, (raw, reason) in zip(letters, bad.items()):
        assert reason in letter.reason
        assert letter.data == raw, "the original bytes are kept"


async def test_an_event_too_large_for_the_bus_is_dead_lettered_at_publish(bus):
    huge = line(cloud_event("huge", "a", "2022-03-20T00:36:00Z", message="x" * (10 * 1024 * 1024)))
    report = await bus.publish_lines([huge, GOOD[0]])
    assert report.rejected == 1 and report.published == 1
    [letter] = await bus.dead_letters()
    assert "over the bus limit" in letter.reason and letter.event_id == "huge"
    assert int(len(letter.data)) < len(huge)


async def test_an_event_over_the_event_size_limit_is_dead_lettered_by_the_consumer(bus):
    big = line(cloud_event("big", "a", "2022-03-20T00:36:00Z", message="x" * 5000))
    await bus.publish_lines([big, GOOD[0]])
    seen, stats = await collect(bus, max_event_bytes=4096)
    assert [e.id for e in seen] == ["e0"] and stats.invalid == 1
    [letter] = await bus.dead_letters()
    assert "over the 4096-byte limit" in letter.reason and letter.data == big


async def test_the_same_id_twice_is_one_event_on_the_bus(bus):
    report = await bus.publish_lines([GOOD[0], GOOD[0], GOOD[1]])
    assert report.published == 2 and report.duplicates == 1
    seen, _ = await collect(bus)
    assert [e.id for e in seen] == ["e0", "e1"]


async def test_a_failing_handler_gets_redeliveries_then_the_dlq(nats_server):
    bus = await Bus.connect(nats_server.url, BusSettings(max_deliver=3))
    await bus.reset_streams()
    try:
        await bus.publish_lines(GOOD[:2])
        attempts = []

        async def handler(events):
            attempts.extend(e.id for e in events)
            return {"e1": "downstream store unavailable"}

        stats = await bus.consume(handler, until_drained=True, fetch_timeout=0.2)
        assert attempts.count("e0") == 1, "a processed event is not delivered again"
        assert attempts.count("e1") == 3, "a failing event is tried max_deliver times"
        assert stats.failed == 1
        [letter] = await bus.dead_letters()
        assert letter.event_id == "e1" and letter.deliveries == 3
        assert "downstream store unavailable" in letter.reason and letter.subject == "rtem.dlq.failed"
    finally:
        await bus.close()


async def test_a_handler_that_raises_loses_nothing(bus):
    await bus.publish_lines(GOOD[:3])
    calls = []

    async def flaky(events):
        calls.append(len(events))
        if len(calls) == 1:
            raise RuntimeError("disk full")

    stats = await bus.consume(flaky, until_drained=True, fetch_timeout=0.2)
    # the failed batch holds what had arrived when it was taken (all three, or fewer when the server was
    # still delivering): each of those comes back once, and every event is processed
    assert stats.processed == 3 and stats.failed == 0 and stats.redelivered == calls[0] >= 1, (stats, calls)


async def test_unacked_events_survive_a_consumer_crash(bus, nats_server):
    await bus.publish_lines(GOOD)
    sub = await bus.js.pull_subscribe("rtem.events.>", durable="triage", stream=EVENTS)
    taken = await sub.fetch(5, timeout=2)
    assert len(taken) == 5  # fetched, never acked: the consumer "crashed"
    await sub.unsubscribe()
    info = await bus.js.consumer_info(EVENTS, "triage")
    assert info.num_ack_pending == 5
    await bus.js.consumer_info(EVENTS, "triage")
    # ack_wait decides when the server redelivers; shorten it for the test instead of waiting 30 s.
    config = info.config
    config.ack_wait = 0.5
    await bus.js.add_consumer(EVENTS, config)
    await asyncio.sleep(0.7)
    seen, _ = await collect(bus)
    assert sorted(e.id for e in seen) == [f"e{i}" for i in range(5)]


async def test_streams_and_consumer_carry_the_configured_limits(nats_server):
    bus = await Bus.connect(nats_server.url, BusSettings(max_ack_pending=64, max_deliver=4, duplicate_window_s=30,
                                                         events_max_msgs=1000, events_max_bytes=8 << 20))
    await bus.reset_streams()
    try:
        await bus.publish_lines(GOOD[:1])
        await collect(bus)
        info = await bus.js.consumer_info(EVENTS, "triage")
        assert info.config.max_ack_pending == 64
        assert info.config.max_deliver == -1, "the server never stops redelivering; rtem applies max_deliver itself"
        events = await bus.js.stream_info(EVENTS)
        assert events.config.duplicate_window == 30 and str(getattr(events.config.storage, "value", events.config.storage)) == "file"
        assert (events.config.max_msgs, events.config.max_bytes, events.config.discard) == (1000, 8 << 20, "new")
        assert (await bus.js.stream_info(DLQ)).config.subjects == ["rtem.dlq.>"]
    finally:
        await bus.close()


async def test_events_on_the_bus_survive_a_server_restart(tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        bus = await Bus.connect(server.url)
        await bus.reset_streams()
        await bus.publish_lines(GOOD)
        await bus.close()
        server.stop()
        server.start()
        bus = await Bus.connect(server.url)
        seen, _ = await collect(bus)
        assert len(seen) == 5
        await bus.close()
    finally:
        server.cleanup()


async def test_deliveries_rtem_never_received_do_not_make_the_server_drop_an_event(nats_server):
    """Fetched and lost (a killed server, a dropped connection) more times than max_deliver: the server
    still redelivers, and the event is handled; a consumer made by an older rtem, whose server-side
    max_deliver would have dropped it silently, is brought to the unlimited one when rtem consumes."""
    from nats.js import api

    bus = await Bus.connect(nats_server.url, BusSettings(max_deliver=2, ack_wait_s=0.3))
    await bus.reset_streams()
    try:
        old = api.ConsumerConfig(name="triage", durable_name="triage", filter_subject="rtem.events.>",
                                 ack_policy=api.AckPolicy.EXPLICIT, ack_wait=0.3, max_deliver=2)
        await bus.js.add_consumer(EVENTS, config=old)
        await bus.publish_lines(GOOD[:1])
        seen, _ = await collect(bus)  # consuming brings the consumer to the unlimited redelivery
        assert [e.id for e in seen] == ["e0"]
        assert (await bus.js.consumer_info(EVENTS, "triage")).config.max_deliver == -1
        await bus.publish_lines(GOOD[1:2])
        sub = await bus.js.pull_subscribe_bind("triage", stream=EVENTS)
        for _ in range(3):  # three deliveries of e1, each lost before anyone handled it
            [lost] = await sub.fetch(1, timeout=2)
            assert lost.metadata.num_delivered == _ + 1
            await asyncio.sleep(0.4)  # past ack_wait: the server redelivers
        await sub.unsubscribe()
        seen, stats = await collect(bus)
        assert [e.id for e in seen] == ["e1"], "delivered a fourth time, past max_deliver, and handled"
        assert stats.failed == 0 and await bus.dead_letters() == []

        await bus.publish_lines(GOOD[2:3])  # never got through 2 x max_deliver deliveries: bounded by the DLQ
        sub = await bus.js.pull_subscribe_bind("triage", stream=EVENTS)
        for _ in range(4):
            await sub.fetch(1, timeout=2)
            await asyncio.sleep(0.4)
        await sub.unsubscribe()
        seen, stats = await collect(bus)
        assert seen == [] and stats.failed == 1
        [letter] = await bus.dead_letters()
        assert letter.event_id == "e2" and letter.deliveries == 5 and "never handled to completion" in letter.reason
    finally:
        await bus.close()


async def test_one_event_the_handler_cannot_take_is_dead_lettered_alone(nats_server):
    # The handler records a batch whole or not at all (triage does). A batch that fails again when
    # redelivered is halved until the event that fails on its own is found: only it is retried to the DLQ.
    bus = await Bus.connect(nats_server.url, BusSettings(max_deliver=3))
    await bus.reset_streams()
    try:
        poison = line(cloud_event("poison", "cartservice-0", "2022-03-20T00:36:03.000Z"))
        await bus.publish_lines([*GOOD[:3], poison, *GOOD[3:]])
        recorded = []

        async def all_or_nothing(events):
            if any(e.id == "poison" for e in events):
                raise ValueError("cannot store this one")
            recorded.extend(e.id for e in events)

        stats = await bus.consume(all_or_nothing, until_drained=True, fetch_timeout=0.2)
        assert sorted(recorded) == ["e0", "e1", "e2", "e3", "e4"], "every good event is recorded once"
        assert stats.failed == 1 and stats.processed == 5
        [letter] = await bus.dead_letters()
        assert letter.event_id == "poison" and letter.deliveries == 3
        assert "cannot store this one" in letter.reason
    finally:
        await bus.close()
