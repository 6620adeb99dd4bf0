"""On call: a person's acknowledge / assign / comment / resolve / reopen, and the pages an escalation
policy says are due (agent/incident/_oncall.py: pure, clock passed in), kept through `agent.oncall.act`
and sent by the `Escalator` over a real SQLite store and audit log. Fast: no process is started."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.audit import AuditLog
from agent.escalation import Escalator, FixedPolicy
from agent.incident import (ActionStatus, Incident, IncidentStatus, OnCallRefusal, OnCallRefused, OnCallState,
                            PlannedAction, acknowledge, assign, comment, due_pages, oncall_state, reopen, resolve)
from agent.oncall import act, state_of
from agent.store import IncidentStore
from rules import load_escalation

NOW = datetime(2026, 1, 15, 15, 0, tzinfo=timezone.utc)  # 10:00 in New York, 16:00 in Berlin
POLICY_TEXT = """\
version: 1
quiet_hours: {timezone: America/New_York, start: "22:00", end: "07:00", min_severity: critical}
routes:
  - id: checkout
    match: {services: [checkout]}
    repeat_every: 10m
    escalate_after: 30m
    levels:
      - receivers: [pagerduty, "rotation:checkout"]
      - receivers: [slack, "person:lead"]
"""


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "escalation.yaml"
    path.write_text(POLICY_TEXT)
    return load_escalation(path)


def incident(status: IncidentStatus = IncidentStatus.AWAITING_APPROVAL, severity: str = "error",
             entities=("checkout",)) -> Incident:
    actions = [PlannedAction(index=0, type="restart_instance", target="checkout", verdict="require_approval",
                             status=ActionStatus.AWAITING_APPROVAL),
               PlannedAction(index=1, type="notify_oncall", target="checkout", verdict="allow",
                             status=ActionStatus.DONE)]
    return Incident(id="inc-1", opened_at=NOW.isoformat(), updated_at=NOW.isoformat(), first_ts=NOW.timestamp(),
                    last_ts=NOW.timestamp(), status=status, severity=severity, entities=list(entities),
                    actions=actions)


@dataclass
class Rec:
    kind: str
    at: datetime
    inputs: dict[str, Any]
    decision: dict[str, Any] | None = None


def minutes(n: float) -> datetime:
    return NOW + timedelta(minutes=n)


# -- transitions ----------------------------------------------------------------------------------

def test_acknowledge_once_then_refused_with_who_did():
    change = acknowledge(incident(), OnCallState(), "alice", NOW)
    assert change.kind == "incident.acknowledged" and change.state.acknowledged_by == "alice"
    with pytest.raises(OnCallRefused) as refused:
        acknowledge(incident(), change.state, "bob", minutes(1))
    assert refused.value.kind == OnCallRefusal.ALREADY_ACKNOWLEDGED and "alice" in refused.value.message
    assert refused.value.kind.http_status == 409


def test_assign_comment_and_their_refusals():
    state = assign(incident(), OnCallState(), "bob", "alice", NOW).state
    assert state.assignee == "bob"
    with pytest.raises(OnCallRefused, match="already assigned to bob"):
        assign(incident(), state, "bob", "alice", NOW)
    with pytest.raises(OnCallRefused) as empty:
        comment(incident(), state, "   ", "alice", NOW)
    assert empty.value.kind == OnCallRefusal.MISSING_TEXT and empty.value.kind.http_status == 422
    closed = incident(IncidentStatus.RESOLVED)
    noted = comment(closed, state, "postmortem on Monday", "alice", NOW)
    assert noted.state.comments[-1].text == "postmortem on Monday"
    with pytest.raises(OnCallRefused) as refused:
        acknowledge(closed, OnCallState(), "alice", NOW)
    assert refused.value.kind == OnCallRefusal.CLOSED and "reopen it first" in refused.value.message


def test_resolve_skips_what_has_not_run_and_a_final_incident_cannot_be_resolved():
    change = resolve(incident(), OnCallState(), "  disk replaced by hand ", "alice", NOW)
    assert change.incident.status == IncidentStatus.RESOLVED
    assert change.incident.resolution == "resolved by alice: disk replaced by hand"
    waiting, page = change.incident.actions
    assert waiting.status == ActionStatus.SKIPPED and "resolved by alice" in waiting.status_reason
    assert page.status == ActionStatus.DONE  # what ran stays as it ran
    assert change.inputs["skipped"] == ["#0 restart_instance on checkout"]
    with pytest.raises(OnCallRefused) as twice:
        resolve(change.incident, change.state, "again", "bob", NOW)
    assert twice.value.kind == OnCallRefusal.CLOSED
    with pytest.raises(OnCallRefused, match="a reason is required"):
        resolve(incident(), OnCallState(), "", "alice", NOW)


def test_reopen_only_a_closed_incident_and_not_a_merged_one():
    with pytest.raises(OnCallRefused) as refused:
        reopen(incident(), OnCallState(), "still broken", "alice", NOW)
    assert refused.value.kind == OnCallRefusal.NOT_CLOSED
    with pytest.raises(OnCallRefused) as merged:
        reopen(incident(IncidentStatus.MERGED), OnCallState(), "still broken", "alice", NOW)
    assert merged.value.kind == OnCallRefusal.MERGED
    acked = OnCallState(acknowledged_by="bob", acknowledged_at=NOW, assignee="bob")
    change = reopen(incident(IncidentStatus.RESOLVED), acked, "still broken", "alice", minutes(5))
    assert change.incident.status == IncidentStatus.OPEN and change.incident.resolution is None
    assert change.state.round == 1 and change.state.acknowledged_by is None and change.state.assignee == "bob"


def test_the_state_is_the_fold_of_the_records_and_a_reopen_starts_a_new_round():
    records = [Rec("incident.paged", NOW, {"level": 0, "repeat": 0, "receivers": ["pagerduty"]}),
               Rec("incident.paged", minutes(1), {"summary": "the graph's own page has no level"}),
               Rec("incident.acknowledged", minutes(2), {"by": "alice"}),
               Rec("incident.assigned", minutes(3), {"by": "alice", "to": "bob"}),
               Rec("incident.commented", minutes(4), {"by": "bob", "text": "looking"}),
               Rec("incident.resolved", minutes(5), {"by": "bob", "reason": "fixed"})]
    state = oncall_state(records)
    assert (state.acknowledged_by, state.assignee, state.resolved_by, state.reason) == ("alice", "bob", "bob", "fixed")
    assert [(p.level, p.repeat) for p in state.pages] == [(0, 0)] and state.comments[0].text == "looking"
    again = oncall_state(records + [Rec("incident.reopened", minutes(6), {"by": "bob", "reason": "back"}),
                                    Rec("incident.paged", minutes(7), {"level": 0, "repeat": 0, "round": 0})])
    assert again.round == 1 and again.acknowledged_by is None and again.pages == ()  # last round's page


# -- due pages ------------------------------------------------------------------------------------

def paged(*pages: tuple[int, int, float]) -> OnCallState:
    return oncall_state(Rec("incident.paged", minutes(at), {"level": level, "repeat": repeat})
                        for level, repeat, at in pages)


def test_first_page_repeat_and_escalate_by_the_clock(policy):
    inc = incident()
    first = due_pages(policy, inc, OnCallState(), NOW)
    assert [(p.level, p.repeat, p.why, p.receivers) for p in first] == [
        (0, 0, "first", ("pagerduty", "rotation:checkout"))]
    assert due_pages(policy, inc, paged((0, 0, 0)), minutes(9)) == []
    assert [(p.level, p.repeat) for p in due_pages(policy, inc, paged((0, 0, 0)), minutes(10))] == [(0, 1)]
    history = paged((0, 0, 0), (0, 1, 10), (0, 2, 20))
    assert due_pages(policy, inc, history, minutes(29)) == []
    escalated = due_pages(policy, inc, history, minutes(30))
    assert [(p.level, p.repeat, p.why, p.receivers) for p in escalated] == [
        (1, 0, "escalate", ("slack", "person:lead"))]
    top = paged((0, 0, 0), (0, 1, 10), (0, 2, 20), (1, 0, 30))
    assert [(p.level, p.repeat) for p in due_pages(policy, inc, top, minutes(40))] == [(1, 1)]  # last level: repeats
    assert due_pages(policy, inc, top, minutes(200))[0].level == 1


def test_acknowledged_final_unmatched_or_without_policy_pages_nothing(policy):
    acked = oncall_state([Rec("incident.paged", NOW, {"level": 0, "repeat": 0}),
                          Rec("incident.acknowledged", minutes(1), {"by": "alice"})])
    assert due_pages(policy, incident(), acked, minutes(60)) == []
    assert due_pages(policy, incident(IncidentStatus.RESOLVED), OnCallState(), NOW) == []
    # rtem gave up on these: a person must act, so the policy pages until someone acknowledges or resolves.
    assert due_pages(policy, incident(IncidentStatus.ESCALATED), OnCallState(), NOW)
    assert due_pages(policy, incident(IncidentStatus.FAILED), OnCallState(), NOW)
    assert due_pages(policy, incident(IncidentStatus.ESCALATED), acked, minutes(60)) == []
    assert due_pages(policy, incident(entities=("search",)), OnCallState(), NOW) == []
    instance = incident(entities=("checkout-1",))
    assert due_pages(policy, instance, OnCallState(), NOW, services={"checkout-1", "checkout"})
    assert due_pages(None, incident(), OnCallState(), NOW) == []


def test_quiet_hours_hold_pages_below_their_severity_until_they_end_across_a_time_zone(policy):
    # 02:59 UTC on 15 Jan is 21:59 in New York (UTC-5): not quiet yet; 03:00 UTC is 22:00 there: quiet.
    before, start = datetime(2026, 1, 15, 2, 59, tzinfo=timezone.utc), datetime(2026, 1, 15, 3, 0, tzinfo=timezone.utc)
    assert due_pages(policy, incident(), OnCallState(), before)
    assert due_pages(policy, incident(), OnCallState(), start) == []
    assert due_pages(policy, incident(severity="critical"), OnCallState(), start)  # at the threshold: pages
    # 11:59 UTC is 06:59 in New York: still held; 12:00 UTC is 07:00: the held page goes out.
    assert due_pages(policy, incident(), OnCallState(), datetime(2026, 1, 15, 11, 59, tzinfo=timezone.utc)) == []
    assert due_pages(policy, incident(), OnCallState(), datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc))
    # In July New York is UTC-4: 02:00 UTC is 22:00 there, quiet.
    assert due_pages(policy, incident(), OnCallState(), datetime(2026, 7, 15, 2, 0, tzinfo=timezone.utc)) == []


# -- kept through act() and sent by the Escalator, on a real store and audit log ---------------------

@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "rtem.db"


@pytest.fixture
def parts(db):
    store, audit = IncidentStore(db), AuditLog(db)
    store.upsert_incident({"id": "inc-1", "first_ts": NOW.timestamp(), "last_ts": NOW.timestamp(), "severity": "error",
                           "entities": ["checkout"], "detections": ["error-event"], "signals": 1})
    store.save_diagnosis("inc-1", status="awaiting_approval", root_causes=[],
                         actions=[a.to_record() for a in incident().actions], versions={})
    yield store, audit
    audit.close()
    store.close()


def test_act_keeps_each_action_as_one_record_and_a_persons_resolve_wins_over_the_thread(parts):
    store, audit = parts
    acked = act(store, audit, "inc-1", "ack", by="alice", via="cli", operator="alice@host", now=NOW)
    assert acked.kind == "incident.acknowledged" and acked.state.acknowledged_by == "alice"
    act(store, audit, "inc-1", "assign", by="alice", via="api", text="bob", now=minutes(1))
    act(store, audit, "inc-1", "comment", by="bob", via="api", text="restarting by hand", now=minutes(2))
    resolved = act(store, audit, "inc-1", "resolve", by="bob", via="console", text="restarted", now=minutes(3))
    assert resolved.status == "resolved"
    row = store.incident("inc-1")
    assert row["status"] == "resolved" and row["actions"][0]["status"] == "skipped"
    kinds = [r.kind for r in audit.records(incident_id="inc-1")]
    assert kinds == ["incident.acknowledged", "incident.assigned", "incident.commented", "incident.resolved"]
    record = audit.records(incident_id="inc-1", kind="incident.resolved")[0]
    assert record.inputs["by"] == "bob" and record.inputs["via"] == "console" and record.inputs["reason"] == "restarted"
    # The incident's thread, still running, writes its last word: the person's resolve stands.
    store.save_diagnosis("inc-1", status="verifying", root_causes=[], actions=[], versions={})
    store.set_status("inc-1", "failed")
    assert store.incident("inc-1")["status"] == "resolved" and store.incident("inc-1")["actions"]
    assert store.active_incidents() == []
    with pytest.raises(OnCallRefused):  # the pending approval can no longer be given
        act(store, audit, "inc-1", "ack", by="carol", via="cli")
    reopened = act(store, audit, "inc-1", "reopen", by="carol", via="cli", text="it is back", now=minutes(9))
    assert reopened.status == "open" and reopened.state.round == 1 and reopened.state.assignee == "bob"
    assert [r["id"] for r in store.active_incidents()] == ["inc-1"]
    store.set_status("inc-1", "diagnosing")  # rtem takes it up anew: its thread may write again
    assert store.incident("inc-1")["status"] == "diagnosing" and store.incident("inc-1")["resolution"] is None


def test_act_answers_an_incident_out_of_scope_exactly_as_one_that_does_not_exist(parts):
    store, audit = parts
    with pytest.raises(OnCallRefused) as hidden:
        act(store, audit, "inc-1", "ack", by="scoped", via="api", visible=lambda row: False)
    with pytest.raises(OnCallRefused) as absent:
        act(store, audit, "inc-nope", "ack", by="scoped", via="api")
    assert hidden.value.kind == absent.value.kind == OnCallRefusal.NO_SUCH_INCIDENT
    assert hidden.value.message == "no incident 'inc-1'" and audit.records(incident_id="inc-1") == []


async def test_the_escalator_repages_until_acknowledged_and_never_twice_across_a_restart(parts, policy):
    store, audit = parts
    sent: list[tuple[str, int, tuple[str, ...], str]] = []
    clock = {"now": NOW}

    async def send(incident_id, level, receivers, summary):
        sent.append((incident_id, level, receivers, summary))

    def escalator():
        return Escalator(FixedPolicy(policy), store, audit, send, lambda: clock["now"])

    first = escalator()
    assert [(i, p.level, p.repeat) for i, p in await first.tick()] == [("inc-1", 0, 0)]
    assert await first.tick() == []  # the same page is not due twice
    clock["now"] = minutes(10)
    assert await escalator().tick() != [] and await escalator().tick() == []  # a "restart": still once
    assert [(s[1], s[2]) for s in sent] == [(0, ("pagerduty", "rotation:checkout"))] * 2
    assert "page 2" in sent[-1][3] and "inc-1" in sent[-1][3]
    paged = audit.records(incident_id="inc-1", kind="incident.paged")
    assert [(r.inputs["level"], r.inputs["repeat"], r.inputs["receivers"]) for r in paged] == [
        (0, 0, ["pagerduty", "rotation:checkout"]), (0, 1, ["pagerduty", "rotation:checkout"])]
    act(store, audit, "inc-1", "ack", by="alice", via="cli", now=minutes(11))
    clock["now"] = minutes(45)
    assert await escalator().tick() == [] and len(sent) == 2  # acknowledged: no repeat, no escalation
    assert state_of(audit, "inc-1").acknowledged_by == "alice"


async def test_an_escalated_incident_is_paged_by_the_leader_until_acknowledged_and_the_ack_is_passed_on(parts,
                                                                                                     policy):
    """rtem gave up on it (escalated): nobody drives it any more, so the leader pages for it; an
    acknowledgement stops that and is passed on to the destinations once (PagerDuty's acknowledge)."""
    store, audit = parts
    store.set_status("inc-1", "escalated")
    sent, told = [], []
    clock = {"now": NOW}

    async def send(incident_id, level, receivers, summary):
        sent.append(incident_id)

    async def acknowledged(incident_id):
        told.append(incident_id)

    def escalator(leads: bool):
        return Escalator(FixedPolicy(policy), store, audit, send, lambda: clock["now"], drives=lambda _i: False,
                         leads=lambda: leads, acknowledged=acknowledged)

    assert await escalator(leads=False).tick() == [] and sent == []  # a standby leaves it to the leader
    assert [i for i, _ in await escalator(leads=True).tick()] == ["inc-1"]
    clock["now"] = minutes(10)
    assert len(await escalator(leads=True).tick()) == 1 and sent == ["inc-1", "inc-1"]  # re-paged
    act(store, audit, "inc-1", "ack", by="alice", via="api", now=minutes(11))
    clock["now"] = minutes(45)
    leader = escalator(leads=True)
    assert await leader.tick() == [] and await leader.tick() == []
    assert told == ["inc-1"] and len(sent) == 2
    clock["now"] = minutes(60 * 25)  # a day later, an unanswered escalation is no longer paged for
    store.set_status("inc-1", "failed")
    assert await escalator(leads=True).tick() == []
    # A person takes it from there: escalated and failed incidents are theirs to resolve.
    assert act(store, audit, "inc-1", "resolve", by="alice", via="api", text="failed over by hand",
               now=minutes(60 * 25)).status == "resolved"


async def test_a_failed_send_is_recorded_and_the_next_repeat_is_the_retry(parts, policy):
    store, audit = parts

    async def down(*_args):
        raise ConnectionError("pagerduty unreachable")

    escalator = Escalator(FixedPolicy(policy), store, audit, down, lambda: NOW)
    assert len(await escalator.tick()) == 1 and await escalator.tick() == []
    failed = audit.records(incident_id="inc-1", kind="incident.page_failed")
    assert len(failed) == 1 and "pagerduty unreachable" in failed[0].reasons[0]


async def test_a_running_thread_stands_down_before_its_next_step_once_a_person_resolved(parts):
    """The graph's execute node, run as a plain function: an allowed action that has not run yet is
    skipped, not executed, once a person resolved the incident (the thread's executors are never called)."""
    from langgraph.runtime import Runtime

    from agent.graph import Deps
    from agent.graph._nodes import execute

    store, audit = parts
    pending = PlannedAction(index=0, type="restart_instance", target="checkout", verdict="allow",
                            status=ActionStatus.PROPOSED)
    state = {"incident": {"id": "inc-1", "entities": ["checkout"]}, "actions": [pending.to_record()]}
    act(store, audit, "inc-1", "resolve", by="alice", via="cli", text="fixed by hand", now=NOW)
    deps = Deps(store=store, audit=audit, reasoner=None, rules=None, topologies=None)
    update = await execute(state, Runtime(context=deps))
    (action,) = update["actions"]
    assert action["status"] == "skipped" and action["status_reason"] == "a person closed the incident"


def test_an_edited_policy_file_is_read_again_and_a_broken_edit_is_refused_keeping_the_last_good_one(tmp_path, db):
    import os

    from agent.escalation import policy_source

    assert policy_source(None).current() is None  # no file: no policy, each incident pages once as before
    path = tmp_path / "escalation.yaml"
    path.write_text(POLICY_TEXT)
    with AuditLog(db) as audit:
        source = policy_source(path, audit)
        assert source.current().routes[0].repeat_every_s == 600
        path.write_text(POLICY_TEXT.replace("repeat_every: 10m", "repeat_every: 2m"))
        os.utime(path, (1, 1))  # a new mtime, however fast the test runs
        assert source.current().routes[0].repeat_every_s == 120
        path.write_text(POLICY_TEXT.replace("America/New_York", "Nowhere/Land"))
        os.utime(path, (2, 2))
        assert source.current().routes[0].repeat_every_s == 120  # the last good policy stays
        refused = audit.records(kind="escalation.refused")
    assert len(refused) == 1 and f"{path}:2:" in refused[0].reasons[0] and "Nowhere/Land" in refused[0].reasons[0]
