"""The idle policy: an incident nothing was done on ages out after `idle_close_s` without a new signal,
in event time, with the wall clock standing in while event time stands still (docs/lifecycle.md)."""

from __future__ import annotations

import pytest

from agent.incident import AlertState, IncidentStatus, age_out
from agent.idle import StillClock
from tests.live import anomaly, publish, settings, wait_for

HOUR = 3600.0


def idle(status=IncidentStatus.OPEN, *, last_signal=1000.0, watermark=1000.0, still_s=0.0, alerts=()):
    return age_out(status, last_signal=last_signal, watermark=watermark, still_s=still_s, idle_close_s=HOUR,
                   alerts=alerts)


def test_an_open_incident_ages_out_after_an_hour_of_event_time_without_a_signal():
    assert idle(watermark=1000 + HOUR - 1) is None
    aged = idle(watermark=1000 + HOUR)
    assert aged.status == IncidentStatus.RESOLVED and aged.recovered_at == 1000 and aged.mttr_s is None
    assert aged.resolution.startswith("aged out: no new signal for 3600s") and "nothing was done" in aged.resolution


def test_when_event_time_stands_still_the_wall_clock_counts():
    assert idle(still_s=HOUR - 1) is None
    assert idle(watermark=1000 + HOUR / 2, still_s=HOUR / 2).status == IncidentStatus.RESOLVED, "the two add up"


def test_an_alert_that_never_resolved_ages_out_escalated():
    firing = AlertState("fp", "HighCpu", fired_ts=1000)
    aged = idle(still_s=HOUR, alerts=[firing])
    assert aged.status == IncidentStatus.ESCALATED and "HighCpu never resolved" in aged.resolution
    over = AlertState("fp", "HighCpu", fired_ts=1000, resolved_ts=1010)
    assert idle(still_s=HOUR, alerts=[over]).status == IncidentStatus.RESOLVED


@pytest.mark.parametrize("status", [s for s in IncidentStatus if s != IncidentStatus.OPEN])
def test_only_an_incident_nothing_was_done_on_ages_out(status):
    assert idle(status, watermark=1000 + 10 * HOUR, still_s=HOUR) is None


def test_a_watermark_behind_the_last_signal_counts_as_no_idle_time():
    assert idle(watermark=0.0, still_s=10.0) is None


def test_the_still_clock_counts_wall_time_since_the_watermark_last_moved():
    now = [100.0]
    still = StillClock(lambda: now[0])
    assert still.seconds(5.0) == 0.0
    now[0] = 130.0
    assert still.seconds(5.0) == 30.0
    assert still.seconds(6.0) == 0.0, "an event moved event time"
    now[0] = 140.0
    assert still.seconds(6.0) == 10.0
    now[0] = 150.0
    assert still.seconds(6.0, silent=False) == 0.0, "a lost connection or a backlog is not silence"
    now[0] = 155.0
    assert still.seconds(6.0) == 5.0


# -- the live service -------------------------------------------------------------------------------------


def alert_doc(event_id: str, subject: str, seconds: float) -> dict:
    from agent.api.ingest import alert_event
    from tests.live import at

    raw = {"status": "firing", "labels": {"alertname": "DiskFull", "pod": subject, "severity": "critical"},
           "startsAt": at(seconds), "endsAt": "0001-01-01T00:00:00Z", "fingerprint": event_id}
    return alert_event(raw, {"version": "4", "status": "firing", "alerts": [raw]})


def incident(service):
    rows = service.parts.store.incidents()
    return rows[0] if rows else None


@pytest.mark.integration
async def test_a_lone_firing_alert_on_a_silent_bus_ages_out_and_a_person_is_paged(tmp_path, nats_server, bus,
                                                                                   boutique):
    from agent.run import Service

    service = await Service(settings(tmp_path, nats_server, diagnose_after_s=1000, idle_close_s=1.0), boutique,
                            poll_s=0.05).start()
    try:
        await publish(bus, [alert_doc("fp-disk", "cartservice-0", 0)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") == "escalated" and incident(service))
        assert row["resolution"].startswith("aged out") and "DiskFull never resolved" in row["resolution"]
        [closed] = service.parts.audit.records(incident_id=row["id"], kind="incident.closed")
        assert closed.decision == {"status": "escalated", "aged_out": True}
        await wait_for(lambda: service.pages)
        assert "aged out" in service.pages[0]["params"]["summary"]
        assert row["id"] not in service.parts.triage.correlator.open
    finally:
        await service.stop()


@pytest.mark.integration
async def test_signals_that_stopped_age_out_resolved(tmp_path, nats_server, bus, boutique):
    from agent.run import Service

    service = await Service(settings(tmp_path, nats_server, diagnose_after_s=1000, idle_close_s=1.0), boutique,
                            poll_s=0.05).start()
    try:
        await publish(bus, [anomaly("a0", "cartservice-0", 0)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") == "resolved" and incident(service))
        assert row["resolution"].startswith("aged out") and service.pages == []
    finally:
        await service.stop()
