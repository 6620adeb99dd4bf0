"""The typed incident core (agent/incident): pure transitions with the clock passed in, no I/O."""

from datetime import datetime, timedelta, timezone

import pytest

from agent import incident as core
from agent.incident import (ActionStatus, Approval, DecisionRefused, Incident, PlannedAction, Policy, Refusal,
                            StepOutcome)
from rules import Proposal, Verdict

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
POLICY = Policy(approval_ttl_s=900, verify_quiet_s=60, verify_deadline_s=600)
S = ActionStatus


def judged(*items):
    return [(Proposal(type=t, target=target, reason=f"{t} {target}"), Verdict(outcome=o)) for t, target, o in items]


def shop_plan(dry_run=False):
    return core.plan(judged(("drain_host", "node-6", "require_approval"), ("restart_instance", "node-6", "allow"),
                            ("scale_out", "frontend", "allow"), ("notify_oncall", "node-6", "allow"),
                            ("failover_database", "db", "deny")),
                     {"drain_host": {"action": "undrain_host"}, "scale_out": {"action": "scale_in"}},
                     dry_run=dry_run)


def approval(decision="approve", at=NOW):
    return Approval(decision=decision, by="alice", at=at)


def run(actions, index, ok=True, error=None):
    return core.record_outcome(actions, index, StepOutcome(ok=ok, error=error))


def test_the_plan_types_each_verdict_and_records_what_depends_on_a_waiting_action():
    plan = shop_plan()
    assert [a.status for a in plan] == [S.AWAITING_APPROVAL, S.PROPOSED, S.PROPOSED, S.PROPOSED, S.DENIED]
    assert plan[1].depends_on == [0]  # same target as the drain that waits
    assert plan[2].depends_on == [] and plan[3].depends_on == []  # another target; a page never waits
    assert [a.status for a in shop_plan(dry_run=True)][:4] == [S.PROPOSED] * 4


def test_paging_runs_first_and_independent_actions_run_while_an_approval_waits():
    plan = shop_plan()
    first = core.next_runnable(plan)
    assert first.type == "notify_oncall"
    plan = run(plan, first.index)
    second = core.next_runnable(plan)
    assert (second.type, second.target) == ("scale_out", "frontend")
    plan = run(plan, second.index)
    assert core.next_runnable(plan) is None  # restart_instance waits for the drain on node-6
    assert [a.index for a in core.waiting(plan)] == [0]


def test_an_approval_lets_the_dependent_action_run_after_it():
    plan = core.request_approval(shop_plan(), NOW)
    plan, changed = core.apply_decisions(plan, {0: approval()}, NOW + timedelta(seconds=5), POLICY)
    assert [(a.index, a.status) for a in changed] == [(0, S.APPROVED)]
    assert changed[0].status_reason == "approved by alice"
    plan = run(run(plan, 3), 2)
    assert core.next_runnable(plan).index == 0  # the drain before the restart that depends on it
    plan = run(plan, 0)
    assert core.next_runnable(plan).index == 1


def test_a_rejection_skips_its_dependents_with_the_reason():
    plan = core.request_approval(shop_plan(), NOW)
    plan, changed = core.apply_decisions(plan, {0: approval("reject")}, NOW, POLICY)
    assert {a.index: a.status for a in changed} == {0: S.REJECTED, 1: S.SKIPPED}
    assert plan[1].status_reason == "it depends on #0 drain_host on node-6, which was rejected"


def test_an_undecided_request_expires_on_the_injected_clock_not_before():
    plan = core.request_approval(shop_plan(), NOW)
    assert core.request_approval(plan, NOW + timedelta(hours=1))[0].requested_at == NOW  # stamped once
    _, changed = core.apply_decisions(plan, {}, NOW + timedelta(seconds=899), POLICY)
    assert changed == []
    plan, changed = core.apply_decisions(plan, {}, NOW + timedelta(seconds=901), POLICY)
    assert changed[0].status == S.EXPIRED and "900s" in changed[0].status_reason
    assert plan[1].status == S.SKIPPED


def test_an_approval_too_old_to_act_on_is_stale():
    plan, _ = core.apply_decisions(core.request_approval(shop_plan(), NOW), {0: approval()}, NOW, POLICY)
    assert core.stale_approval(plan[0], NOW + timedelta(seconds=10), POLICY) is None
    assert "past its 900s lifetime" in core.stale_approval(plan[0], NOW + timedelta(seconds=1000), POLICY)
    refused = core.refuse(plan, 0, S.EXPIRED, "too old")
    assert refused[0].status == S.EXPIRED and refused[1].status == S.SKIPPED


def test_a_failure_skips_every_open_action_with_the_reason_and_compensates_in_reverse():
    plan = shop_plan()
    plan = run(run(plan, 3), 2)  # the page, then scale_out
    plan = run(plan, 1, ok=False, error="boom")  # as if it ran
    plan, undo = core.fail_plan(plan, 1)
    assert plan[0].status == S.SKIPPED and "#1 restart_instance on node-6 failed (boom)" in plan[0].status_reason
    assert [a.index for a in undo] == [2]  # the page has no compensation and stays done
    plan = core.mark_compensated(plan, 2, True, None)
    assert [a.status for a in plan] == [S.SKIPPED, S.FAILED, S.COMPENSATED, S.DONE, S.DENIED]
    assert all(a.status_reason for a in plan if a.status == S.SKIPPED)


def test_recovery_is_judged_in_event_time():
    plan = run(run(shop_plan(), 3), 2)
    judge = lambda **kw: core.judge_recovery(plan, opened_ts=1000.0, policy=POLICY, **kw)  # noqa: E731
    assert judge(acted_at=1100.0, last_signal=None, watermark=1159.0).status == "verifying"
    resolved = judge(acted_at=1100.0, last_signal=1120.0, watermark=1180.0)
    assert (resolved.status, resolved.mttr_s) == ("resolved", 120.0)
    assert judge(acted_at=1100.0, last_signal=1750.0, watermark=1760.0).status == "escalated"
    only_paged = run(shop_plan(), 3)
    assert "no remediation ran" in core.judge_recovery(only_paged, acted_at=None, last_signal=None, watermark=2000.0,
                                                       opened_ts=1000.0, policy=POLICY).resolution


def incident_with(plan):
    return Incident(id="inc-1", opened_at="t", updated_at="t", first_ts=0, last_ts=0, status="awaiting_approval",
                    severity="error", actions=plan)


def test_a_decision_is_refused_with_a_typed_reason():
    plan = core.request_approval(shop_plan(), NOW)
    incident = incident_with(plan)
    core.check_decision(incident, plan[0], None, NOW, POLICY)  # waits, undecided, fresh: allowed
    with pytest.raises(DecisionRefused) as refused:
        core.check_decision(incident, plan[0], approval("reject"), NOW, POLICY)
    assert refused.value.kind == Refusal.ALREADY_DECIDED and "reject by alice" in refused.value.message
    failed = run(plan, 1, ok=False, error="boom")
    with pytest.raises(DecisionRefused) as refused:
        core.check_decision(incident_with(failed), failed[1], None, NOW, POLICY)
    assert refused.value.kind == Refusal.NOT_AWAITING and refused.value.kind.http_status == 409
    with pytest.raises(DecisionRefused) as refused:
        core.check_decision(incident, plan[0], None, NOW + timedelta(seconds=901), POLICY)
    assert refused.value.kind == Refusal.EXPIRED
    with pytest.raises(DecisionRefused) as refused:
        core.check_decision(incident, plan[0], None, NOW, POLICY, lambda a: ("out_of_scope", f"not {a.target}"))
    assert refused.value.kind == Refusal.OUT_OF_SCOPE and refused.value.kind.http_status == 403
    assert [a.index for a in core.select(incident, "drain_host")] == [0]
    with pytest.raises(DecisionRefused):
        core.select(incident, "an")


def test_a_stored_action_round_trips_through_its_record():
    action = shop_plan()[0]
    record = action.to_record()
    assert record["status"] == "awaiting_approval" and record["executed"] is False
    assert PlannedAction.model_validate(record) == action
