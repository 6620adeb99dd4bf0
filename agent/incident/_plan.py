"""The plan's transitions as pure functions: lists of `PlannedAction` in, new lists out, the clock passed in.

    plan() ─► request_approval() ─► apply_decisions() ─► next_runnable() ─► record_outcome()
                                                                              │ failed
                                                                              ▼
                                                                   fail_plan() ─► mark_compensated()

Paging comes first and never waits: `next_runnable` returns a page before anything else, and an
action that needs no approval runs at once unless it depends on one that waits (an earlier action on
the same target that needs approval: the reasoner lists remedies in the order they make sense).
Nothing is "skipped" without a reason in `status_reason`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rules import Proposal, Verdict

from ._model import PAGE, ActionStatus, Approval, IncidentStatus, PlannedAction, Policy, Recovery, StepOutcome

S = ActionStatus
_OPEN = (S.PROPOSED, S.APPROVED, S.AWAITING_APPROVAL)  # not run, not refused: still part of the plan


def plan(judged: Sequence[tuple[Proposal, Verdict]], compensations: Mapping[str, dict[str, Any] | None], *,
         dry_run: bool) -> list[PlannedAction]:
    """The plan from the guard's verdicts. In a dry run nothing waits: allowed and approval-needing
    actions alike stay `proposed`, with the verdict saying which would wait."""
    actions: list[PlannedAction] = []
    for index, (proposal, verdict) in enumerate(judged):
        if verdict.outcome == "deny":
            status = S.DENIED
        elif verdict.outcome == "require_approval" and not dry_run:
            status = S.AWAITING_APPROVAL
        else:
            status = S.PROPOSED
        depends = [] if proposal.type == PAGE else [
            a.index for a in actions if a.target == proposal.target and a.verdict == "require_approval"
            and a.status != S.DENIED]
        actions.append(PlannedAction(
            index=index, type=proposal.type, target=proposal.target, params=proposal.params,
            verdict=verdict.outcome, rules=verdict.rules, reason=verdict.reason, approver_role=verdict.approver_role,
            proposed_by=proposal.proposed_by, status=status, depends_on=depends,
            compensation=compensations.get(proposal.type)))
    return actions


def request_approval(actions: Sequence[PlannedAction], now: datetime) -> list[PlannedAction]:
    """Stamp when approval was first asked for; its lifetime counts from then."""
    return [a.model_copy(update={"requested_at": now}) if a.status == S.AWAITING_APPROVAL and a.requested_at is None
            else a for a in actions]


def waiting(actions: Sequence[PlannedAction]) -> list[PlannedAction]:
    return [a for a in actions if a.status == S.AWAITING_APPROVAL]


def apply_decisions(actions: Sequence[PlannedAction], decisions: Mapping[int, Approval], now: datetime,
                    policy: Policy) -> tuple[list[PlannedAction], list[PlannedAction]]:
    """People's decisions and expiry applied to the waiting actions: the new plan and the actions
    whose status changed (each to be recorded once). A rejected or expired action takes the actions
    that depend on it with it, each skipped with the reason."""
    out = list(actions)
    changed: list[PlannedAction] = []
    for i, action in enumerate(out):
        if action.status != S.AWAITING_APPROVAL:
            continue
        decision = decisions.get(action.index)
        if decision is not None:
            status = S.APPROVED if decision.decision == "approve" else S.REJECTED
            why = f"{'approved' if status == S.APPROVED else 'rejected'} by {decision.by}" + (
                f": {decision.reason}" if decision.reason else "")
            out[i] = action.model_copy(update={"status": status, "approval": decision, "status_reason": why})
        elif action.requested_at is not None and (now - action.requested_at).total_seconds() > policy.approval_ttl_s:
            out[i] = action.model_copy(update={
                "status": S.EXPIRED,
                "status_reason": f"nobody decided within {policy.approval_ttl_s:.0f}s of the request"})
        else:
            continue
        changed.append(out[i])
    for gone in [a for a in changed if a.status in (S.REJECTED, S.EXPIRED)]:
        out, skipped = _skip_dependents(out, gone)
        changed.extend(skipped)
    return out, changed


def next_runnable(actions: Sequence[PlannedAction]) -> PlannedAction | None:
    """The next action to run: a page first, then allowed or approved ones in plan order whose
    dependencies are done. None when nothing can run now (done, or everything left waits)."""
    done = {a.index for a in actions if a.status == S.DONE}
    ready = [a for a in actions if (a.status == S.APPROVED or (a.status == S.PROPOSED and a.verdict == "allow"))
             and all(d in done for d in a.depends_on)]
    ready.sort(key=lambda a: (a.type != PAGE, a.index))
    return ready[0] if ready else None


def stale_approval(action: PlannedAction, now: datetime, policy: Policy) -> str | None:
    """Why an approved action must not run now: its approval is older than its lifetime."""
    if action.approval is None:
        return None
    age = (now - action.approval.at).total_seconds()
    if age > policy.approval_ttl_s:
        return f"the approval is {age:.0f}s old, past its {policy.approval_ttl_s:.0f}s lifetime"
    return None


def refuse(actions: Sequence[PlannedAction], index: int, status: ActionStatus, reason: str,
           rules: Sequence[str] = ()) -> list[PlannedAction]:
    """An action that will not run (expired or blocked when its turn came), and its dependents skipped."""
    outcome = StepOutcome(ok=False, error=reason, rules=list(rules))
    out = [a.model_copy(update={"status": status, "status_reason": reason, "outcome": outcome}) if a.index == index
           else a for a in actions]
    out, _ = _skip_dependents(out, next(a for a in out if a.index == index))
    return out


def record_outcome(actions: Sequence[PlannedAction], index: int, outcome: StepOutcome) -> list[PlannedAction]:
    status = S.DONE if outcome.ok else S.FAILED
    return [a.model_copy(update={"status": status, "outcome": outcome,
                                 "status_reason": "" if outcome.ok else outcome.error or "failed"})
            if a.index == index else a for a in actions]


def fail_plan(actions: Sequence[PlannedAction], failed: int) -> tuple[list[PlannedAction], list[PlannedAction]]:
    """A step failed for good: every action not yet run is skipped with the reason, and the done
    actions that can be undone are returned in reverse order, to compensate (a saga)."""
    culprit = next(a for a in actions if a.index == failed)
    why = f"the plan stopped: {culprit.label} failed ({culprit.status_reason or 'no reason given'})"
    out = [a.model_copy(update={"status": S.SKIPPED, "status_reason": why}) if a.status in _OPEN else a
           for a in actions]
    undo = [a for a in reversed(out) if a.status == S.DONE and (a.compensation or {}).get("action")]
    return out, undo


def mark_compensated(actions: Sequence[PlannedAction], index: int, ok: bool, error: str | None) -> list[PlannedAction]:
    status = S.COMPENSATED if ok else S.COMPENSATION_FAILED
    return [a.model_copy(update={"status": status, "status_reason": "" if ok else error or "compensation failed"})
            if a.index == index else a for a in actions]


def remedies_done(actions: Sequence[PlannedAction]) -> list[PlannedAction]:
    """What ran that was meant to fix something (a page informs, it does not remedy)."""
    return [a for a in actions if a.status == S.DONE and a.type != PAGE]


def judge_recovery(actions: Sequence[PlannedAction], *, acted_at: float | None, last_signal: float | None,
                   watermark: float, opened_ts: float, policy: Policy) -> Recovery:
    """Verification in event time: resolved after `verify_quiet_s` without a new signal since acting,
    escalated when nothing remedial ran or the deadline passed, otherwise still verifying."""
    if not remedies_done(actions) or acted_at is None:
        why = sorted({a.status.value for a in actions if a.type != PAGE})
        return Recovery(IncidentStatus.ESCALATED,
                        f"no remediation ran ({', '.join(why) or 'none proposed'}); a person must act")
    quiet_since = max(acted_at, last_signal or acted_at)
    if watermark - quiet_since >= policy.verify_quiet_s:
        return Recovery(IncidentStatus.RESOLVED, f"no new signal for {policy.verify_quiet_s:.0f}s of event time "
                        "after acting", recovered_at=quiet_since, mttr_s=round(quiet_since - opened_ts, 3))
    if watermark - acted_at > policy.verify_deadline_s:
        return Recovery(IncidentStatus.ESCALATED, f"still showing signals {policy.verify_deadline_s:.0f}s of event "
                        "time after acting; a person must look")
    return Recovery(IncidentStatus.VERIFYING)


def _skip_dependents(actions: list[PlannedAction], gone: PlannedAction) -> tuple[list[PlannedAction], list[PlannedAction]]:
    skipped: list[PlannedAction] = []
    out = list(actions)
    for i, action in enumerate(out):
        if gone.index in action.depends_on and action.status in _OPEN:
            out[i] = action.model_copy(update={
                "status": S.SKIPPED, "status_reason": f"it depends on {gone.label}, which was {gone.status.value}"})
            skipped.append(out[i])
    return out, skipped
