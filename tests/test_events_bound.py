"""Issue 16: the EVENTS stream is bounded (bytes and messages, DiscardPolicy.NEW), trimmed of what triage
acknowledged, and a publish it refuses because it is full is a clear error, never a silent loss. Against a
real nats-server throughout."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from nats.js import api
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from agent.cli import app
from agent.config import Settings
from bus import EVENTS, EVENTS_MAX_BYTES, EVENTS_MAX_MSGS, TRIAGE, Bus, BusSettings
from tests.conftest import cloud_event, write_events
from tests.live import ThreadedService, api_client, anomaly, settings as live_settings, wait_for

pytestmark = pytest.mark.integration


def lines(prefix: str, n: int, start: int = 0) -> list[bytes]:
    return [json.dumps(cloud_event(f"{prefix}{i}", "cartservice-0", f"2022-03-20T00:36:{i % 60:02d}.000Z")).encode()
            for i in range(start, start + n)]


async def bounded(url: str, **bounds) -> Bus:
    """A connection whose EVENTS is made anew with `bounds` (BusSettings fields)."""
    bus = await Bus.connect(url, BusSettings(**bounds))
    await bus.reset_streams()
    return bus


async def consume_all(bus: Bus) -> list[str]:
    seen: list[str] = []

    async def handler(events):
        seen.extend(e.id for e in events)

    await bus.consume(handler, until_drained=True, fetch_timeout=0.2)
    return seen


@pytest.fixture
async def restore_streams(nats_server):
    """Put the shared server's streams back to the defaults after a test that bounded them tightly."""
    yield
    bus = await Bus.connect(nats_server.url)
    await bus.reset_streams()
    await bus.close()


# -- the bounds --------------------------------------------------------------------------------------


async def test_events_carries_the_bounds_and_refuses_when_full_rather_than_dropping(bus):
    config = (await bus.js.stream_info(EVENTS)).config
    assert config.max_bytes == EVENTS_MAX_BYTES == 1 << 30 and config.max_msgs == EVENTS_MAX_MSGS == 2_000_000
    assert config.discard == api.DiscardPolicy.NEW, "unread events are refused at the door, never dropped"
    assert config.retention == api.RetentionPolicy.LIMITS, "published to before any consumer, read again"
    chosen = Settings(events_max_bytes=5 << 20, events_max_msgs=1000, events_keep_s=60).bus_settings()
    assert (chosen.events_max_bytes, chosen.events_max_msgs, chosen.events_keep_s) == (5 << 20, 1000, 60)


async def test_a_full_stream_refuses_with_the_reason_and_loses_nothing_it_took(nats_server, restore_streams):
    bus = await bounded(nats_server.url, events_max_msgs=5)
    try:
        started = time.monotonic()
        report = await bus.publish_lines(lines("f", 8))
        assert time.monotonic() - started < 5, "a refusal answers at once, not after a publish timeout"
        assert (report.lines, report.published, report.rejected, report.full) == (8, 5, 3, 3)
        assert report.full_ids == ["f5", "f6", "f7"]
        assert report.reasons == [report.full_reason] * 3
        assert report.full_reason == ("the event stream is full (maximum messages exceeded; max_msgs 5 / max_bytes "
                                      "1.0 GiB): rtem is behind (or stopped); retry later")
        again = await bus.publish_lines(lines("f", 8))  # the producer retries the whole batch
        assert (again.duplicates, again.full) == (5, 3), "what was taken dedupes; only the rest is refused"
        assert sorted(await consume_all(bus)) == [f"f{i}" for i in range(5)]
        assert (await bus.js.stream_info(EVENTS)).state.messages == 5
        assert await bus.trim_events(keep_s=0) == 5
        after = await bus.publish_lines(lines("f", 3, start=5))
        assert (after.published, after.full) == (3, 0), "trimmed, the stream takes events again"
    finally:
        await bus.close()


async def test_the_byte_bound_refuses_too(nats_server, restore_streams):
    bus = await bounded(nats_server.url, events_max_bytes=2000)
    try:
        report = await bus.publish_lines(lines("b", 20))
        assert 0 < report.published < 20 and report.full == 20 - report.published
        assert "maximum bytes exceeded" in report.full_reason
        assert (await bus.js.stream_info(EVENTS)).state.messages == report.published
    finally:
        await bus.close()


async def test_an_old_unbounded_stream_is_bounded_in_place_without_losing_a_message(nats_server, restore_streams):
    bus = await Bus.connect(nats_server.url, BusSettings(events_max_msgs=3))
    try:
        await bus.reset_streams()
        await bus.js.delete_stream(EVENTS)
        # EVENTS as rtem made it before issue 16: LIMITS, 7 days, no bound, DiscardOld (the server's default).
        await bus.js.add_stream(api.StreamConfig(
            name=EVENTS, subjects=["rtem.events.>"], storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
            duplicate_window=120, max_age=7 * 86400, description="rtem input events (CloudEvents JSON)"))
        assert (await bus.js.stream_info(EVENTS)).config.discard == api.DiscardPolicy.OLD
        assert (await bus.publish_lines(lines("o", 5))).published == 5
        await bus.ensure_streams()
        info = await bus.js.stream_info(EVENTS)
        assert (info.config.max_msgs, info.config.max_bytes, info.config.discard) == (3, 1 << 30, api.DiscardPolicy.NEW)
        assert info.state.messages == 5, "more than the new bound, and still every message: DiscardNew drops none"
        assert (await bus.publish_lines(lines("o", 1, start=5))).full == 1, "over its bound, it takes nothing new"
        assert sorted(await consume_all(bus)) == [f"o{i}" for i in range(5)]
    finally:
        await bus.close()


# -- trimming ----------------------------------------------------------------------------------------


async def test_trim_removes_only_acknowledged_events_never_one_in_flight(nats_server, restore_streams):
    """Trimming from inside the handler, while its batch is delivered and not yet acknowledged: only events of
    earlier batches may go, and every event is still handled in full."""
    bus = await bounded(nats_server.url)
    try:
        await bus.publish_lines(lines("t", 12))
        handled: list[str] = []
        trims: list[tuple[int, int]] = []  # (removed, handled before the trim)

        async def handler(events):
            removed = await bus.trim_events(keep_s=0)
            trims.append((removed, len(handled)))
            handled.extend(e.id for e in events)

        await bus.consume(handler, batch=4, until_drained=True, fetch_timeout=0.2)
        assert sorted(handled, key=lambda i: int(i[1:])) == [f"t{i}" for i in range(12)]
        assert all(removed <= before for removed, before in trims), trims
        assert trims[0] == (0, 0), "nothing is acknowledged before the first batch"
        removed_in_flight = sum(removed for removed, _ in trims)
        removed_after = await bus.trim_events(keep_s=0)
        assert removed_in_flight + removed_after == 12
        assert (await bus.js.stream_info(EVENTS)).state.messages == 0
        assert await bus.trim_events(keep_s=0) == 0
    finally:
        await bus.close()


async def test_trim_leaves_unread_events_and_keeps_recent_acknowledged_ones(nats_server, restore_streams):
    bus = await bounded(nats_server.url, events_keep_s=3600)
    try:
        await bus.publish_lines(lines("k", 6))
        assert await bus.trim_events(keep_s=0) == 0, "no consumer yet: nothing is acknowledged"
        assert len(await consume_all(bus)) == 6
        await bus.publish_lines(lines("k", 4, start=6))  # published, never consumed
        assert await bus.trim_events() == 0, "acknowledged, but younger than events_keep_s"
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        assert await bus.trim_events(now=later) == 6, "older than the keep window: the acknowledged ones go"
        state = (await bus.js.stream_info(EVENTS)).state
        assert (state.messages, state.first_seq) == (4, 7)
        assert sorted(await consume_all(bus)) == [f"k{i}" for i in range(6, 10)], "the unread ones are all there"
    finally:
        await bus.close()


async def test_the_keep_window_finds_its_boundary_and_gives_way_when_the_stream_is_half_full(nats_server,
                                                                                            restore_streams):
    bus = await bounded(nats_server.url, events_max_msgs=40)
    try:
        await bus.publish_lines(lines("w", 10))
        await asyncio.sleep(1.0)
        boundary = datetime.now(timezone.utc)
        await bus.publish_lines(lines("w", 9, start=10))
        await consume_all(bus)
        # 19 of 40: below half. Kept: what was stored less than keep_s before `now`, here after the boundary.
        removed = await bus.trim_events(keep_s=60, now=boundary + timedelta(seconds=60))
        assert removed == 10, "exactly the events stored before the boundary"
        assert (await bus.js.stream_info(EVENTS)).state.first_seq == 11
        await bus.publish_lines(lines("w", 12, start=19))
        await consume_all(bus)
        assert (await bus.js.stream_info(EVENTS)).state.messages == 21  # over half of 40
        assert await bus.trim_events(keep_s=3600) == 21, "half full: the keep window gives way"
    finally:
        await bus.close()


async def test_rtem_run_trims_events_regularly(tmp_path, nats_server, boutique, bus):
    from agent.run import Service

    before = trimmed_total()
    cfg = live_settings(tmp_path, nats_server, events_keep_s=0, events_trim_every_s=0.2)
    service = await Service(cfg, boutique, poll_s=0.05).start()
    try:
        await bus.publish_lines([json.dumps(anomaly(f"r{i}", "cartservice-0", i)).encode() for i in range(20)])

        async def trimmed():
            return (await bus.js.stream_info(EVENTS)).state.messages == 0

        await wait_for(trimmed, 20)
        assert trimmed_total() - before == 20
        info = await bus.js.consumer_info(EVENTS, TRIAGE)
        assert info.ack_floor.stream_seq == 20 and info.num_pending == 0
    finally:
        await service.stop()


def trimmed_total() -> float:
    return REGISTRY.get_sample_value("rtem_events_trimmed_total") or 0.0


# -- what producers see ----------------------------------------------------------------------------


def test_rtem_ingest_says_the_stream_is_full_and_exits_1(nats_server, tmp_path, monkeypatch, restore_streams):
    monkeypatch.setenv("RTEM_EVENTS_MAX_MSGS", "3")  # ingest brings EVENTS to its settings first
    events = write_events(tmp_path / "e.jsonl", [cloud_event(f"i{i}", "a", "2024-01-01T00:00:00Z") for i in range(5)])
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(events), "--nats-url", nats_server.url])
    assert result.exit_code == 1, result.output
    assert "3 published" in result.stdout and "0 rejected (too large" in result.stdout
    assert "2 line(s) not published: the event stream is full (maximum messages exceeded" in result.stderr
    assert "dead-lettered" not in result.stderr, "refused lines are not in the DLQ"
    again = runner.invoke(app, ["ingest", str(events), "--nats-url", nats_server.url, "--json"])
    assert again.exit_code == 1
    doc = json.loads(again.stdout)
    assert (doc["duplicates"], doc["full"], doc["dead_lettered"]) == (3, 2, [])
    assert doc["full_reason"].startswith("the event stream is full")


def test_the_api_answers_503_with_retry_after_when_it_took_nothing(tmp_path, boutique):
    from agent.tokens import TokenStore

    data = tmp_path / "data"
    cfg = Settings(data_dir=data, http_port=0, events_max_msgs=5, events_trim_every_s=3600)
    live = ThreadedService(cfg, boutique).start()
    try:
        live.tokens = {"operator": TokenStore(data / "rtem.db").create("op", "operator")[0]}
        batch = {"content-type": "application/cloudevents-batch+json"}
        events = [anomaly(f"a{i}", "cartservice-0", i) for i in range(8)]
        with api_client(live, "operator") as http:
            first = http.post("/api/v1/events", content=json.dumps(events[:5]), headers=batch)
            assert first.status_code == 202 and first.json()["accepted"] == 5
            full = http.post("/api/v1/events", content=json.dumps(events[5:]), headers=batch)
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"] == "30"
            assert full.json()["error"].startswith("none of the 3 event(s) was accepted: the event stream is full")
            single = http.post("/api/v1/events", json=events[5])
            assert single.status_code == 503
            mixed = http.post("/api/v1/events", content=json.dumps(events[3:7]), headers=batch)
            assert mixed.status_code == 202, "two were taken before (duplicates): not a refusal of the request"
            assert mixed.json()["duplicates"] == 2 and mixed.json()["accepted"] == 0
            assert mixed.json()["refused"] == 2 and mixed.json()["refused_ids"] == ["a5", "a6"]
            assert mixed.json()["reason"].startswith("the event stream is full")
    finally:
        live.stop()


async def test_a_redrive_into_a_full_stream_leaves_the_letters_and_says_why(nats_server, restore_streams, tmp_path):
    from agent.audit import AuditLog
    from agent.dlq import DeadLetterQueue, Outcome

    bus = await bounded(nats_server.url, events_max_msgs=2)
    try:
        assert (await bus.publish_lines(lines("fill", 2))).published == 2  # EVENTS is full
        for i in range(3):
            await bus.dead_letter(lines(f"late{i}-", 1)[0], "test letter", event_id=f"late{i}-0", kind="failed")
        with AuditLog(tmp_path / "audit.db") as audit:
            dlq = DeadLetterQueue(bus, audit, max_event_bytes=1 << 20)
            report = await dlq.redrive(by="ann@host", via="cli")
            assert [r.outcome for r in report.results] == [Outcome.still_failing] * 3
            assert {r.reason for r in report.results} == {
                "the event stream is full (maximum messages exceeded; max_msgs 2 / max_bytes 1.0 GiB): rtem is "
                "behind (or stopped); retry later"}
            assert await dlq.count() == 3, "every letter stays in the DLQ, to be redriven later"
            assert [r.kind for r in audit.records()][-1] == "dlq.redriven", "the attempt is recorded"
    finally:
        await bus.close()
