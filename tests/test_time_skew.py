"""Event time never jumps ahead on a bad clock: an event dated further than `max_future_skew_s`
(RTEM_MAX_CLOCK_SKEW_S) after the moment it is consumed goes to the DLQ, and nothing of it reaches
triage, its watermark or its incidents."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent.config import Settings
from agent.service import build
from bus import Bus, BusSettings, format_time, parse_event
from bus._envelope import dated_ahead
from tests.helpers import cloud_event

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def event(event_id: str, time: datetime | str, subject: str = "cartservice-0"):
    when = time if isinstance(time, str) else format_time(time)
    return cloud_event(event_id, subject, when, severity="critical", message="cpu anomalous (up)",
                       metric="container_cpu_usage_seconds", direction="up")


# -- the rule, pure -----------------------------------------------------------------------------------


def test_an_event_from_the_year_9999_is_refused_with_how_far_ahead_and_the_setting():
    far = parse_event(json.dumps(event("far", "9999-12-31T00:00:00Z")))
    reason = dated_ahead(far, NOW, 300.0)
    assert reason is not None and reason.startswith("dated 9999-12-31T00:00:00.000Z, ")
    ahead = (far.time - NOW).total_seconds()
    assert f"{ahead:.0f} s ahead of the receive time 2026-01-02T03:04:05.000Z" in reason
    assert "RTEM_MAX_CLOCK_SKEW_S=300" in reason


def test_a_little_ahead_within_the_skew_is_accepted_and_just_past_it_is_not():
    assert dated_ahead(parse_event(json.dumps(event("soon", NOW + timedelta(seconds=299)))), NOW, 300.0) is None
    assert dated_ahead(parse_event(json.dumps(event("past", NOW - timedelta(days=400)))), NOW, 300.0) is None
    late = dated_ahead(parse_event(json.dumps(event("late", NOW + timedelta(seconds=301)))), NOW, 300.0)
    assert late is not None and "301 s ahead" in late


def test_the_setting_reaches_the_bus():
    assert Settings(max_clock_skew_s=42).bus_settings().max_future_skew_s == 42


# -- through the bus into triage ----------------------------------------------------------------------


async def consume_into_triage(bus: Bus, tmp_path, topology, settings: Settings | None = None):
    parts = build(settings or Settings(data_dir=tmp_path / "data"), topology, tmp_path / "data")
    stats = await bus.consume(parts.triage, until_drained=True, fetch_timeout=0.2)
    return parts, stats


@pytest.mark.integration
async def test_an_event_dated_9999_is_dead_lettered_and_moves_neither_watermark_nor_incidents(bus, tmp_path,
                                                                                              boutique):
    now = datetime.now(timezone.utc)
    soon = now + timedelta(seconds=60)  # a producer whose clock runs a minute fast: within the skew
    await bus.publish_lines([json.dumps(e).encode() for e in (
        event("before", now - timedelta(seconds=30)), event("far", "9999-12-31T00:00:00Z"), event("soon", soon))])
    parts, stats = await consume_into_triage(bus, tmp_path, boutique)
    try:
        [letter] = await bus.dead_letters()
        assert letter.subject == "rtem.dlq.future" and letter.event_id == "far"
        assert letter.reason.startswith("dated 9999-12-31T00:00:00.000Z, ")
        assert "s ahead of the receive time" in letter.reason
        assert "RTEM_MAX_CLOCK_SKEW_S=300" in letter.reason
        assert json.loads(letter.data)["id"] == "far", "the original bytes are kept"
        assert stats.invalid == 1 and stats.processed == 2
        assert parts.triage.detector.watermark == pytest.approx(soon.timestamp(), abs=0.001), \
            "the watermark is the latest accepted event's time, not the year 9999"
        assert parts.store.known_ids(["before", "far", "soon"]) == {"before", "soon"}
        [incident] = parts.store.incidents()
        assert incident["last_ts"] < now.timestamp() + 61
        assert {e.id for e in parts.store.events(incident["id"])} == {"before", "soon"}
    finally:
        await parts.close()


@pytest.mark.integration
async def test_the_skew_allowed_is_the_setting(nats_server, tmp_path, boutique):
    settings = Settings(data_dir=tmp_path / "data", max_clock_skew_s=10)
    bus = await Bus.connect(nats_server.url, settings.bus_settings())
    await bus.reset_streams()
    try:
        minute_ahead = event("minute", datetime.now(timezone.utc) + timedelta(seconds=60))
        await bus.publish_lines([json.dumps(minute_ahead).encode()])
        parts, _ = await consume_into_triage(bus, tmp_path, boutique, settings)
        try:
            [letter] = await bus.dead_letters()
            assert letter.event_id == "minute" and "RTEM_MAX_CLOCK_SKEW_S=10:" in letter.reason
            assert parts.triage.detector.watermark == 0.0 and parts.store.incidents() == []
        finally:
            await parts.close()
    finally:
        await bus.close()


def test_bus_settings_default_to_five_minutes():
    assert BusSettings().max_future_skew_s == 300.0
