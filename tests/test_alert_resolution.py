"""A resolved alert is recovery evidence for its incident, never a new signal: triage records it with the
incident its firing alert opened or joined; it closes that incident without action when it came before
rtem acted, and counts as recovery after acting (docs/lifecycle.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.api.ingest import alert_event
from agent.incident import (ActionStatus, AlertState, IncidentStatus, PlannedAction, Policy, alert_states,
                            alerts_recovered, judge_recovery, stand_down)
from agent.store import IncidentStore
from agent.triage import Triage
from bus import event_from_dict
from rules import Correlator, Detector, load_detections
from tests.helpers import T0
from tests.live import Target, anomaly, publish, settings, wait_for

T = T0.timestamp()


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def alert(status: str, starts: float, ends: float | None = None, *, pod: str = "cartservice-0",
          name: str = "HighCpu", fingerprint: str = "fp-cpu") -> dict:
    """What Alertmanager's webhook becomes through rtem's own adapter."""
    raw = {"status": status, "labels": {"alertname": name, "pod": pod, "severity": "critical"},
           "annotations": {"summary": f"{name} on {pod}"}, "startsAt": at(starts),
           "endsAt": at(ends) if ends is not None else "0001-01-01T00:00:00Z", "fingerprint": fingerprint}
    return alert_event(raw, {"version": "4", "status": status, "receiver": "rtem", "alerts": [raw]})


# -- triage: where a resolution goes --------------------------------------------------------------------


@pytest.fixture
def triage(tmp_path, boutique):
    store = IncidentStore(tmp_path / "rtem.db")
    detector = Detector(load_detections(), boutique)
    yield Triage(store, detector, Correlator(boutique, gap_s=300))
    detector.close()
    store.close()


def events(*docs):
    return [event_from_dict(d) for d in docs]


def test_a_resolution_hours_later_joins_the_incident_its_firing_alert_opened_and_raises_no_signal(triage):
    firing, resolved = alert("firing", 0), alert("resolved", 0, 2 * 3600)
    triage.handle(events(firing))
    [incident] = triage.store.incidents()
    signals = triage.stats.signals
    result = triage.handle(events(resolved))
    assert result.opened == [] and triage.stats.signals == signals, "a resolution is not a signal"
    assert triage.store.event_incident_id(resolved["id"]) == incident["id"], \
        "recorded with the firing alert's incident, though far past the correlation gap"
    assert triage.store.incident(incident["id"])["event_count"] == 2
    [row] = triage.store.events_by_id([resolved["id"]])
    assert row["signals"] is None
    states = alert_states(triage.store.alert_events(incident["id"]))
    assert states == [AlertState("fp-cpu", "HighCpu", fired_ts=T, resolved_ts=T + 7200, resolved_by=resolved["id"])]


def test_firing_and_resolution_in_one_batch(triage):
    firing, resolved = alert("firing", 0), alert("resolved", 0, 3600)  # an hour apart: time alone would not tie them
    result = triage.handle(events(firing, resolved))
    [incident_id] = result.opened
    assert triage.store.event_incident_id(resolved["id"]) == incident_id


def test_a_resolution_is_no_signal_even_for_a_rule_that_matches_every_alert(tmp_path, boutique):
    rules = tmp_path / "detect"
    rules.mkdir()
    (rules / "alerts.yaml").write_text("version: 1\ndetections:\n  - id: any-alert\n    match: {type: rtem.alert}\n")
    store = IncidentStore(tmp_path / "rtem.db")
    triage = Triage(store, Detector(load_detections(rules), boutique), Correlator(boutique, gap_s=300))
    try:
        triage.handle(events(alert("firing", 0)))
        result = triage.handle(events(alert("resolved", 0, 3600)))
        assert result.opened == [] and len(store.incidents()) == 1
        assert triage.stats.signals == 1
        anonymous = alert("resolved", 0, 3700)
        del anonymous["data"]["attributes"]["fingerprint"]  # from a producer that sends none
        anonymous["id"] = "no-fingerprint"
        assert triage.handle(events(anonymous)).opened == [] and triage.stats.signals == 1
    finally:
        triage.detector.close()
        store.close()


def test_a_resolution_of_an_alert_that_never_fired_here_is_context_not_evidence(triage):
    triage.handle(events(alert("firing", 0, fingerprint="fp-a", name="A")))
    [incident] = triage.store.incidents()
    triage.handle(events(alert("resolved", 0, 30, fingerprint="fp-b", name="B")))  # B's firing was never seen
    states = alert_states(triage.store.alert_events(incident["id"]))
    assert [s.name for s in states] == ["A"] and not states[0].resolved


# -- the judgement, pure ---------------------------------------------------------------------------------


def action(index: int, type_: str, status: ActionStatus, verdict: str = "allow") -> PlannedAction:
    return PlannedAction(index=index, type=type_, target="cartservice-0", verdict=verdict, status=status)


def test_alerts_recover_the_incident_only_when_all_resolved_and_no_signal_came_after():
    a = AlertState("fa", "A", fired_ts=10, resolved_ts=50, resolved_by="ra")
    b = AlertState("fb", "B", fired_ts=20, resolved_ts=70, resolved_by="rb")
    recovered = alerts_recovered([a, b], last_signal=20)
    assert recovered is not None and recovered.at == 70 and recovered.alerts == ("A", "B")
    assert recovered.evidence == ("ra", "rb")
    assert alerts_recovered([a, AlertState("fb", "B", fired_ts=20)], last_signal=20) is None, "B still fires"
    assert alerts_recovered([a, b], last_signal=80) is None, "a signal after the last resolution"
    assert alerts_recovered([], last_signal=None) is None, "no alert: judged by time as before"
    refired = AlertState("fa", "A", fired_ts=60, resolved_ts=50)
    assert not refired.resolved and alerts_recovered([refired], last_signal=60) is None


def test_alert_states_take_the_latest_firing_and_resolution_per_fingerprint():
    rows = [{"id": "f1", "ts": 10.0, "fingerprint": "fa", "alertname": "A", "status": "firing", "signal": 1},
            {"id": "r1", "ts": 30.0, "fingerprint": "fa", "alertname": "A", "status": "resolved", "signal": 0},
            {"id": "f2", "ts": 40.0, "fingerprint": "fa", "alertname": "A", "status": "firing", "signal": 1},
            {"id": "i1", "ts": 45.0, "fingerprint": "fz", "alertname": "Z", "status": "firing", "signal": 0}]
    [state] = alert_states(rows)
    assert state == AlertState("fa", "A", fired_ts=40.0, resolved_ts=30.0, resolved_by="r1") and not state.resolved


def test_resolved_before_acting_closes_without_action_and_after_acting_counts_as_recovery():
    recovered = alerts_recovered([AlertState("fa", "HighCpu", fired_ts=100, resolved_ts=160, resolved_by="r")], 100)
    skipped = [action(0, "restart_instance", ActionStatus.SKIPPED)]
    before = judge_recovery(skipped, acted_at=None, last_signal=None, watermark=160, opened_ts=100,
                            policy=Policy(), alerts=recovered)
    assert before.status == IncidentStatus.RESOLVED and before.mttr_s == 60
    assert before.resolution.startswith("the alert resolved before rtem acted: HighCpu resolved at ")
    done = [action(0, "restart_instance", ActionStatus.DONE)]
    after = judge_recovery(done, acted_at=130, last_signal=None, watermark=160, opened_ts=100,
                           policy=Policy(verify_quiet_s=3600), alerts=recovered)
    assert after.status == IncidentStatus.RESOLVED and after.recovered_at == 160
    assert after.resolution.startswith("the alert resolved after acting")
    # without the alerts' word, the same plan is still verifying (quiet not yet long enough)
    waiting = judge_recovery(done, acted_at=130, last_signal=None, watermark=160, opened_ts=100,
                             policy=Policy(verify_quiet_s=3600))
    assert waiting.status == IncidentStatus.VERIFYING


def test_stand_down_skips_what_has_not_run_with_the_reason():
    actions = [action(0, "notify_oncall", ActionStatus.DONE),
               action(1, "drain_host", ActionStatus.AWAITING_APPROVAL, "require_approval"),
               action(2, "restart_instance", ActionStatus.PROPOSED),
               action(3, "scale_out", ActionStatus.DENIED, "deny")]
    out, changed = stand_down(actions, "the alert resolved before rtem acted")
    assert [a.status for a in out] == [ActionStatus.DONE, ActionStatus.SKIPPED, ActionStatus.SKIPPED,
                                       ActionStatus.DENIED]
    assert [a.index for a in changed] == [1, 2]
    assert all(a.status_reason == "the alert resolved before rtem acted" for a in changed)


# -- the live service -------------------------------------------------------------------------------------


def incident(service):
    rows = service.parts.store.incidents()
    return rows[0] if rows else None


@pytest.fixture
async def target(bus):
    obeying = Target()
    await obeying.attach(bus.nc)
    return obeying


@pytest.mark.integration
async def test_an_alert_that_resolved_before_rtem_acted_closes_its_incident_without_action(
        tmp_path, nats_server, bus, target, boutique):
    from agent.run import Service

    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        # The resolution moves event time past the settle window: the incident is diagnosed now, and
        # must not restart anything for an alert that is over.
        await publish(bus, [alert("firing", 0), alert("resolved", 0, 120)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") in ("resolved", "escalated")
                             and incident(service))
        assert row["status"] == "resolved", row["resolution"]
        assert row["resolution"].startswith("the alert resolved before rtem acted")
        assert target.applied == [] and service.pages == [], "no action ran, nobody was paged"
        assert row["actions"] and all(a["status"] in ("skipped", "denied") for a in row["actions"])
        kinds = [r.kind for r in service.parts.audit.records(incident_id=row["id"])]
        assert "action.executed" not in kinds and "actions.stood_down" in kinds and "incident.closed" in kinds
    finally:
        await service.stop()


@pytest.mark.integration
async def test_a_resolution_inside_the_settle_window_still_closes_a_lone_alert(tmp_path, nats_server, bus, target,
                                                                                boutique):
    from agent.run import Service

    service = await Service(settings(tmp_path, nats_server, diagnose_after_s=1000), boutique, poll_s=0.05).start()
    try:
        await publish(bus, [alert("firing", 0)])
        await wait_for(lambda: incident(service))
        await publish(bus, [alert("resolved", 0, 10)])
        row = await wait_for(lambda: incident(service)["status"] == "resolved" and incident(service))
        assert row["resolution"].startswith("the alert resolved before rtem acted") and target.applied == []
    finally:
        await service.stop()


@pytest.mark.integration
async def test_an_alert_resolving_after_rtem_acted_is_the_recovery(tmp_path, nats_server, bus, target, boutique):
    from agent.run import Service

    # verification by quiet alone would take an hour of event time here
    service = await Service(settings(tmp_path, nats_server, verify_quiet_s=3600, verify_deadline_s=7200), boutique,
                            poll_s=0.05).start()
    try:
        await publish(bus, [alert("firing", 0), *(anomaly(f"a{i}", "cartservice-0", i) for i in range(10))])
        await wait_for(lambda: target.applied)
        await wait_for(lambda: incident(service)["status"] == "verifying")
        await publish(bus, [alert("resolved", 0, 30)])
        row = await wait_for(lambda: incident(service)["status"] == "resolved" and incident(service))
        assert row["resolution"].startswith("the alert resolved after acting"), row["resolution"]
        assert row["mttr_s"] == 30
    finally:
        await service.stop()


@pytest.mark.integration
async def test_an_alert_resolving_while_an_action_awaits_approval_ends_the_wait(tmp_path, nats_server, bus, target,
                                                                                  boutique):
    from agent.run import Service

    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        await publish(bus, [alert("firing", 0, pod="node-6", name="HostCpu", fingerprint="fp-host"),
                            *(anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10))])
        await wait_for(lambda: (incident(service) or {}).get("status") == "awaiting_approval")
        await publish(bus, [alert("resolved", 0, 40, pod="node-6", name="HostCpu", fingerprint="fp-host")])
        row = await wait_for(lambda: incident(service)["status"] == "resolved" and incident(service))
        assert row["resolution"].startswith("the alert resolved before rtem acted")
        [drain] = [a for a in row["actions"] if a["type"] == "drain_host"]
        assert drain["status"] == "skipped" and "the alert resolved" in drain["status_reason"]
        assert target.applied == []
    finally:
        await service.stop()
