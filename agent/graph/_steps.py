"""The graph's side effects: a step run exactly once behind the ledger's idempotency key, a page,
and the re-check of an approved action before it runs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rules import Proposal

from .. import incident as core
from ..action_history import DbActionHistory
from ..executors import Step
from ..incident import PAGE, ActionStatus, PlannedAction, StepOutcome
from ..ledger import ledger_scope, step_key
from ._deps import Deps


async def page_oncall(deps: Deps, incident_id: str, summary: str, why: str) -> StepOutcome | None:
    """Page a person through the notify_oncall contract, once per (incident, why), and record it as an
    `incident.paged` decision: the outcome, or that no pager is configured."""
    contract = deps.rules.current().guard.contracts.get(PAGE)
    if deps.dry_run or contract is None or deps.executors is None or deps.ledger is None:
        deps.audit.append("incident.paged", incident_id=incident_id, node=why, inputs={"summary": summary},
                          decision={"paged": False}, versions=deps.versions(),
                          reasons=["nobody was paged: " + ("dry run" if deps.dry_run else "no notify_oncall contract "
                                                           "or executor is configured")])
        return None
    key = step_key(ledger_scope(deps.audit, incident_id), why, "page")
    row = deps.ledger.start(key, incident_id, -1, "page", PAGE, incident_id, {"summary": summary})
    if row["status"] != "started":
        return StepOutcome.model_validate(row["outcome"])
    outcome = (await deps.executors.run(contract, Step(key, incident_id, PAGE, incident_id,
                                                       {"summary": summary[:2000]}, "page"))).to_dict()
    deps.ledger.finish(key, outcome["ok"], {**outcome, "key": key})
    deps.audit.append("incident.paged", incident_id=incident_id, node=why,
                      inputs={"summary": summary, "idempotency_key": key},
                      decision={"paged": outcome["ok"], "result": outcome["result"]},
                      reasons=[outcome["error"] or f"paged about {why}: {summary}"], versions=deps.versions())
    return StepOutcome.model_validate({**outcome, "key": key})


async def run_step(deps: Deps, incident_id: str, action: PlannedAction, kind: str,
                    params: dict[str, Any]) -> StepOutcome:
    """One step, exactly once: the ledger says whether it already ran; the key goes to the target."""
    key = step_key(ledger_scope(deps.audit, incident_id), action.index, kind)
    step_type = action.type if kind == "do" else (action.compensation or {})["action"]
    row = deps.ledger.start(key, incident_id, action.index, kind, step_type, action.target, params)
    if row["status"] != "started":
        return StepOutcome.model_validate(row["outcome"])
    step = Step(key, incident_id, step_type, action.target, params, kind)
    outcome = (await deps.executors.run(deps.rules.current().guard.contracts[step_type], step)).to_dict()
    outcome["key"] = key
    deps.ledger.finish(key, outcome["ok"], outcome)
    deps.audit.append(
        "action.executed" if kind == "do" else "action.compensated", incident_id=incident_id, node="execute",
        inputs={"action": action.label, "params": params, "idempotency_key": key, "attempts": outcome["attempts"],
                **({"worker": deps.worker} if deps.worker else {})},
        decision={"ok": outcome["ok"], "result": outcome["result"], "breaker_open": outcome["breaker_open"]},
        reasons=[outcome["error"]] if outcome["error"] else [f"{step_type} on {action.target} succeeded"],
        versions=deps.versions())
    return StepOutcome.model_validate(outcome)


def stale(deps: Deps, incident: dict[str, Any], action: PlannedAction):
    """Why an approved action must not run now: its approval expired, or the guard says no today."""
    reason = core.stale_approval(action, deps.clock(), deps.policy)
    if reason:
        return ActionStatus.EXPIRED, reason, []
    guard = deps.rules.current().guard
    verdict = guard.evaluate(
        Proposal(type=action.type, target=action.target, params=action.params, proposed_by=action.proposed_by),
        topology=deps.topology, incident_entities=incident["entities"], incident_id=incident["id"],
        incident_severity=incident["severity"], at=datetime.fromtimestamp(deps.watermark(), timezone.utc),
        history=others_of(guard.history, incident["id"]))
    if verdict.outcome == "deny":
        return ActionStatus.BLOCKED, "the guard now denies it: " + verdict.reason, verdict.rules
    return None


def others_of(history, incident_id: str):
    """The action history an incident is judged by: the actions of every other incident (its own were
    allowed by the same judgement, and a re-run must not count them against it)."""
    return history.excluding(incident_id) if isinstance(history, DbActionHistory) else history
