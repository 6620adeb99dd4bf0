"""The plan's transitions as pure functions: lists of `PlannedAction` in, new lists out, the clock passed in.

    plan() ─► request_approval() ─► apply_decisions() ─► next_runnable() ─► record_outcome()
                                                                              │ failed
                                                                              ▼
                                                                   fail_plan() ─► mark_compensated()

Paging comes first and never waits: `next_runnable` returns a page before anything else, and an
action that needs no approval runs at once unless it depends on one that waits (an earlier action on
the same target that needs approval: the reasoner lists remedies in the order they make sense).
Nothing is "skipped" without a reason in `status_reason`.

An incident's alerts can settle it: when every alert that fired in it has resolved and no signal came
after (`alerts_recovered`), what has not run yet stands down (`stand_down`) and verification counts it
as recovery (`judge_recovery`). An incident nothing was done on ages out when idle (`age_out`).
The lifecycle as a whole is described in docs/lifecycle.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from bus import format_time
from rules import Proposal, Verdict

from ._model import (PAGE, ActionStatus, AlertRecovery, AlertState, Approval, IncidentStatus, PlannedAction, Policy,
                     Recovery, StepOutcome)

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
                   watermark: float, opened_ts: float, policy: Policy,
                   alerts: AlertRecovery | None = None) -> Recovery:
    """Verification in event time: resolved when the incident's alerts all resolved (`alerts`, from
    `alerts_recovered`) whether or not anything ran, or after `verify_quiet_s` without a new signal since
    acting; escalated when nothing remedial ran or the deadline passed; otherwise still verifying."""
    if alerts is not None:
        return _recovered_by_alerts(alerts, acted_at if remedies_done(actions) else None, opened_ts)
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


def alert_states(events: Iterable[Mapping[str, Any]]) -> list[AlertState]:
    """An incident's alerts from its `rtem.alert` events (rows with id, ts, fingerprint, alertname,
    status and signal, as `IncidentRepository.alert_events` gives them). Only alerts that fired in the
    incident count: a firing event that raised a signal; a resolution of an alert that never fired here
    is context, not evidence."""
    fired: dict[str, float] = {}
    resolved: dict[str, tuple[float, str]] = {}
    names: dict[str, str] = {}
    for event in events:
        fingerprint = str(event["fingerprint"])
        names.setdefault(fingerprint, str(event.get("alertname") or fingerprint))
        if event["status"] == "resolved":
            if fingerprint not in resolved or event["ts"] >= resolved[fingerprint][0]:
                resolved[fingerprint] = (event["ts"], event["id"])
        elif event["signal"]:
            fired[fingerprint] = max(event["ts"], fired.get(fingerprint, event["ts"]))
    return [AlertState(fingerprint=f, name=names[f], fired_ts=ts, resolved_ts=resolved.get(f, (None, None))[0],
                       resolved_by=resolved.get(f, (None, None))[1]) for f, ts in sorted(fired.items())]


def alerts_recovered(alerts: Sequence[AlertState], last_signal: float | None) -> AlertRecovery | None:
    """Whether an incident's alerts say it is over: it has alerts, every one resolved since it last
    fired, and its latest signal (`last_signal`, event time) is not after the last resolution. None when
    not: an incident with no alert, or with one still firing, is judged by time as before."""
    if not alerts or not all(a.resolved for a in alerts):
        return None
    at = max(a.resolved_ts for a in alerts)
    if last_signal is not None and last_signal > at:
        return None
    return AlertRecovery(at=at, alerts=tuple(a.name for a in alerts),
                         evidence=tuple(a.resolved_by for a in alerts if a.resolved_by))


def stand_down(actions: Sequence[PlannedAction], reason: str) -> tuple[list[PlannedAction], list[PlannedAction]]:
    """Nothing more is needed (the incident's alerts resolved): every action not run yet is skipped with
    the reason. The new plan, and the actions that changed."""
    out = [a.model_copy(update={"status": S.SKIPPED, "status_reason": reason}) if a.status in _OPEN else a
           for a in actions]
    return out, [a for a, before in zip(out, actions) if a.status != before.status]


def age_out(status: IncidentStatus, *, last_signal: float, watermark: float, still_s: float, idle_close_s: float,
            alerts: Sequence[AlertState] = ()) -> Recovery | None:
    """The idle policy: an incident nothing was done on (still `open`: never diagnosed, nothing ran) that
    no signal touched for `idle_close_s` is closed. None while it is not idle that long, or not open.

    Idle time is the event time since its last signal (`watermark - last_signal`) plus `still_s`, the
    wall-clock seconds event time has stood still (no event moved the watermark): while events flow,
    `still_s` stays near 0 and this is event time; when the bus falls silent, the wall clock is the only
    clock left, and a lone alert must not stay open forever. It closes `resolved` when its signals just
    stopped, `escalated` (a person must look) when an alert in it never resolved."""
    if status != IncidentStatus.OPEN:
        return None
    idle = max(0.0, watermark - last_signal) + max(0.0, still_s)
    if idle < idle_close_s:
        return None
    firing = [a.name for a in alerts if not a.resolved]
    if firing:
        return Recovery(IncidentStatus.ESCALATED,
                        f"aged out: no new signal for {idle:.0f}s and nothing was done, but {', '.join(firing)} "
                        "never resolved; a person must look")
    return Recovery(IncidentStatus.RESOLVED,
                    f"aged out: no new signal for {idle:.0f}s (RTEM_IDLE_CLOSE_S={idle_close_s:g}) and nothing "
                    "was done; it ended on its own", recovered_at=last_signal)


def _recovered_by_alerts(alerts: AlertRecovery, acted_at: float | None, opened_ts: float) -> Recovery:
    what = f"{', '.join(alerts.alerts)} resolved at {_iso(alerts.at)} and no signal came after"
    if acted_at is None:
        why = f"the alert resolved before rtem acted: {what}"
    elif alerts.at >= acted_at:
        why = f"the alert resolved after acting: {what}"
    else:
        why = f"the alert resolved before rtem acted ({what}); the action ran before rtem learned of it"
    return Recovery(IncidentStatus.RESOLVED, why, recovered_at=alerts.at, mttr_s=round(alerts.at - opened_ts, 3))


def _iso(ts: float) -> str:
    return format_time(datetime.fromtimestamp(ts, timezone.utc))


def _skip_dependents(actions: list[PlannedAction], gone: PlannedAction) -> tuple[list[PlannedAction], list[PlannedAction]]:
    skipped: list[PlannedAction] = []
    out = list(actions)
    for i, action in enumerate(out):
        if gone.index in action.depends_on and action.status in _OPEN:
            out[i] = action.model_copy(update={
                "status": S.SKIPPED, "status_reason": f"it depends on {gone.label}, which was {gone.status.value}"})
            skipped.append(out[i])
    return out, skipped
