"""The graph's nodes: small functions over the thread's state that load it, call the pure plan
transitions of `agent.incident`, and append the decision record. What they need from outside comes
in through the run's context (`Deps`), so a test can run a node as a plain function."""

from __future__ import annotations

from datetime import datetime, timezone

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from bus import parse_time
from rules import Diagnosis, Proposal
from rules.topology import described_by

from .. import incident as core
from .. import investigate
from .. import metrics
from ..incident import PAGE, ActionStatus, PlannedAction
from ..fitness import diagnosis_of, keep_fit
from ..ledger import ledger_scope, step_key
from ..models import ReasonerRun, RootCause
from ..reasoner import DeterministicReasoner, described_note, unlisted, unlisted_note
from ._deps import Deps, IncidentState, plan_of, records
from ._steps import others_of, page_oncall, run_step, stale


def gather_context(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    row = runtime.context.store.incident(state["incident_id"])
    if row is None:
        raise LookupError(f"incident {state['incident_id']} is not in the store")
    if runtime.context.investigator is not None:
        _investigate(runtime.context, row)
    keep = ("id", "opened_at", "updated_at", "status", "severity", "entities", "detections", "event_count",
            "signal_count")
    return {"incident": {k: row[k] for k in keep}, "dry_run": runtime.context.dry_run}


def _investigate(deps: Deps, row: dict) -> None:
    """Query Prometheus about the incident's entities and record what it shows as evidence, once per
    incident (a re-run after a crash finds the record); Prometheus' failures are recorded, never raised."""
    if deps.audit.records(incident_id=row["id"], kind=investigate.GATHERED):
        return
    found = deps.investigator.investigate(row["id"], row["entities"], row["first_ts"], row["last_ts"],
                                          deps.topology, deps.clock())
    investigate.record(found, deps.store, deps.audit, prometheus=deps.investigator.url,
                       queries=deps.investigator.queries.digest, versions=deps.versions())


def diagnose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    view = deps.view(incident["id"])
    causes, run = deps.reasoner.diagnose(view)
    reasons = [f"{c.entity}: {c.explanation}" for c in causes[:3]] or ["no candidate had evidence"]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    # Entities the topology lacks: weighed when their events say which service they belong to, else not.
    described = described_by(view.events, view.topology)
    missing = unlisted(incident["entities"], view.topology.with_instances(described))
    for note in (described_note(described), unlisted_note(missing)):
        if note:
            reasons.insert(0, note)
    deps.audit.append(
        "causes.ranked", incident_id=incident["id"], node="diagnose",
        inputs={"events": len(view.events), "entities": incident["entities"], "topology": deps.topology.digest,
                "earlier_incidents": view.history.incidents if view.history is not None else 0,
                **({"unlisted": missing} if missing else {}), **({"described": described} if described else {})},
        decision={"root_causes": [c.model_dump() for c in causes], "reasoner": run.model_dump()},
        reasons=reasons, evidence=causes[0].evidence if causes else [], versions=deps.versions(run))
    return {"root_causes": [c.model_dump() for c in causes], "diagnosis": run.model_dump()}


def propose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """The reasoner's proposals; a model's proposals that do not remedy the diagnosed cause are replaced
    by the deterministic remedies for it (agent/fitness.py), and the record says which and why."""
    deps = runtime.context
    causes = [RootCause.model_validate(c) for c in state.get("root_causes", [])]
    diagnosis = ReasonerRun.model_validate(state["diagnosis"]) if state.get("diagnosis") else None
    view = deps.view(state["incident"]["id"])
    proposals, run = deps.reasoner.propose(view, causes, diagnosis)
    judged_against = diagnosis_of(causes, view.events, view.topology)  # what the guard judges fitness against
    replaced: list[str] = []
    if any(p.proposed_by != DeterministicReasoner.name for p in proposals):
        remedies = DeterministicReasoner().remedies(causes, view.topology, view.events)
        proposals, replaced = keep_fit(proposals, judged_against, view.topology, deps.rules.current().guard,
                                       remedies)
    reasons = replaced + [f"{p.type} on {p.target}: {p.reason}" for p in proposals]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    deps.audit.append(
        "actions.proposed", incident_id=state["incident"]["id"], node="propose",
        inputs={"root_causes": [c.entity for c in causes]},
        decision={"proposals": [p.model_dump() for p in proposals], "reasoner": run.model_dump(),
                  **({"replaced_as_unfit": replaced} if replaced else {})},
        reasons=reasons, evidence=causes[0].evidence[:5] if causes else [], versions=deps.versions(run))
    return {"proposals": [p.model_dump() for p in proposals],
            "fitness": judged_against.model_dump(mode="json") if judged_against else None}


def guard(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    at = parse_time(incident["updated_at"])
    # Allowed actions go to the guard's action history, which its rate limits and caps count
    # (agent/action_history.py); the record keeps what `rtem rules replay` needs to judge it again.
    ruleset = deps.rules.current()  # one rule set judges the whole plan
    history = ruleset.guard.history
    # An incident whose alerts resolved already is judged for the record, and nothing of it will run:
    # its actions are not counted against the guardrails' limits.
    recovered = None if deps.dry_run else _alert_recovery(deps, incident["id"])
    # The diagnosis the propose step held the proposals to (None: no cause, or a thread checkpointed
    # before this was kept, whose proposals are judged without fitness as they were then).
    diagnosis = Diagnosis.model_validate(state["fitness"]) if state.get("fitness") else None
    judged = []
    for raw in state.get("proposals", []):
        proposal = Proposal.model_validate(raw)
        seen = history.watermark() if hasattr(history, "watermark") else None
        verdict = ruleset.guard.evaluate(
            proposal, topology=deps.topology, incident_entities=incident["entities"],
            incident_id=incident["id"], incident_severity=incident["severity"], at=at,
            history=others_of(history, incident["id"]), diagnosis=diagnosis)
        if verdict.outcome == "allow" and history is not None and recovered is None:
            # Keyed by what it is, so a re-run of this node (after a crash) records nothing new.
            history.record(proposal.type, proposal.target, at, incident_id=incident["id"],
                           key=f"{incident['id']}#{proposal.type}@{proposal.target}")
        metrics.VERDICTS.labels(outcome=verdict.outcome).inc()
        deps.audit.append(
            "action.verdict", incident_id=incident["id"], node="guard",
            inputs={"proposal": proposal.model_dump(),
                    "context": {"incident_entities": incident["entities"], "incident_severity": incident["severity"],
                                "at": incident["updated_at"], "history_seq": seen,
                                **({"diagnosis": diagnosis.model_dump(mode="json")} if diagnosis else {})}},
            decision={"outcome": verdict.outcome, "rules": verdict.rules, "approver_role": verdict.approver_role},
            # The versions of the rule set that judged it, even if another was swapped in meanwhile (a
            # reload here, or another worker's version adopted).
            reasons=verdict.reasons, versions={**deps.versions(), **ruleset.versions, "ruleset": verdict.ruleset,
                                              "contract": verdict.contract or ""})
        judged.append((proposal, verdict))
    compensations = {name: contract.compensation.model_dump() for name, contract in ruleset.guard.contracts.items()}
    actions = core.plan(judged, compensations, dry_run=deps.dry_run)
    if recovered is not None:
        actions = _stand_down(deps, incident["id"], actions, recovered, "guard")
    return {"actions": records(actions)}


def approve(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Wait for people on the actions that need approval, while everything that does not wait runs.

    One pass does one thing: stamp and record the request (once), or apply the decisions the ledger
    has (written by `rtem approve`, the API or the console) and record each change once, or wait in
    `interrupt()` when nothing changed. Waiting is the last thing a pass does, so a resumed pass
    repeats nothing."""
    deps = runtime.context
    incident_id = state["incident"]["id"]
    actions = plan_of(state)
    recovered = _alert_recovery(deps, incident_id)
    if recovered is not None:  # nobody needs to decide any more
        return {"actions": records(_stand_down(deps, incident_id, actions, recovered, "approve"))}
    now = deps.clock()
    pending = core.waiting(actions)
    if any(a.requested_at is None for a in pending):
        if not deps.audit.records(incident_id=incident_id, kind="approval.requested"):
            deps.audit.append(
                "approval.requested", incident_id=incident_id, node="approve",
                inputs={"actions": [a.label for a in pending]},
                decision={"approver_roles": sorted({a.approver_role or "approver" for a in pending})},
                reasons=[a.reason for a in pending], versions=deps.versions())
        return {"actions": records(core.request_approval(actions, now))}
    actions, changed = core.apply_decisions(actions, deps.ledger.decisions(ledger_scope(deps.audit, incident_id)),
                                            now, deps.policy)
    if not changed:
        asked = min(a.requested_at for a in pending)
        interrupt({"waiting": "approval", "incident_id": incident_id, "asked_at": asked.isoformat(),
                   "actions": [a.index for a in pending], "labels": [a.label for a in pending]})
        return {}
    for action in changed:
        by = action.approval.by if action.approval else "rtem"
        deps.audit.append("action.approval", incident_id=incident_id, node="approve",
                          inputs={"action": action.label}, decision={"status": action.status.value, "by": by},
                          reasons=[action.status_reason], versions=deps.versions())
    return {"actions": records(actions)}


async def execute(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Run the next runnable action (a page first), one per pass, so each is checkpointed on its own.

    The kill switch is checked before anything happens; an approved action must still be fresh and
    is judged by the guard again on the current state. A failure compensates the steps already done,
    in reverse order, and skips the rest with the reason (a saga)."""
    deps = runtime.context
    incident = state["incident"]
    actions = plan_of(state)
    action = core.next_runnable(actions)
    if action is None:
        return {}
    recovered = _alert_recovery(deps, incident["id"])
    if recovered is not None:  # checked before every step: a resolution may arrive between two of them
        return {"actions": records(_stand_down(deps, incident["id"], actions, recovered, "execute"))}
    if deps.store.closed_by_person(incident["id"]):  # a person resolved it meanwhile (agent/oncall.py)
        return {"actions": records(core.stand_down(actions, "a person closed the incident")[0])}
    if deps.ledger.paused():
        interrupt({"waiting": "resume", "incident_id": incident["id"], "reason": "execution is paused (rtem pause)"})
    if action.status == ActionStatus.APPROVED:
        refused = stale(deps, incident, action)
        if refused:
            status, reason, rules = refused
            deps.audit.append("action.blocked", incident_id=incident["id"], node="execute",
                              inputs={"action": action.label}, decision={"status": status.value},
                              reasons=[reason], versions=deps.versions())
            return {"actions": records(core.refuse(actions, action.index, status, reason, rules))}
    outcome = await run_step(deps, incident["id"], action, "do", action.params)
    actions = core.record_outcome(actions, action.index, outcome)
    update: IncidentState = {"actions": records(actions)}
    if outcome.ok:
        if action.type != PAGE:
            update["acted_at"] = max(state.get("acted_at") or 0.0, deps.watermark())
        history = deps.rules.current().guard.history
        if action.verdict == "require_approval" and history is not None:
            # The guard recorded allowed actions when it judged them; approved ones count once they ran.
            history.record(action.type, action.target, datetime.fromtimestamp(deps.watermark(), timezone.utc),
                           incident_id=incident["id"], key=step_key(ledger_scope(deps.audit, incident["id"]), action.index))
        return update
    actions, undo = core.fail_plan(actions, action.index)
    compensated = []
    for done in undo:
        params = ((done.outcome.result if done.outcome else {}) or {}).get("compensate_with") or done.params
        result = await run_step(deps, incident["id"], done, "compensate", params)
        actions = core.mark_compensated(actions, done.index, result.ok, result.error)
        compensated.append({"action": done.label, "compensated": result.ok, "error": result.error})
    update["actions"] = records(actions)
    update["saga"] = {"failed": action.label, "error": outcome.error, "compensated": compensated}
    return update


def verify(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Look for evidence of recovery in event time (`incident.judge_recovery`). Until it is judged the
    thread ends in status "verifying" and the service starts it again (at this node) when event time
    has moved."""
    deps = runtime.context
    incident = state["incident"]
    if state.get("saga"):
        saga = state["saga"]
        return {"status": "escalated", "resolution": f"{saga['failed']} failed: {saga['error']}; "
                                                     f"{len(saga['compensated'])} completed step(s) compensated"}
    acted_at = state.get("acted_at")
    recovery = core.judge_recovery(
        plan_of(state), acted_at=acted_at, watermark=deps.watermark(), opened_ts=parse_time(incident["opened_at"]).timestamp(),
        last_signal=deps.store.last_signal(incident["id"], after_ts=acted_at) if acted_at is not None else None,
        policy=deps.policy, alerts=_alert_recovery(deps, incident["id"]))
    update: IncidentState = {"status": recovery.status.value}
    if recovery.resolution:
        update["resolution"] = recovery.resolution
    if recovery.recovered_at is not None:
        update.update(recovered_at=recovery.recovered_at, mttr_s=recovery.mttr_s)
    return update


async def escalate(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """An escalated incident always pages (again), with the reason, whatever ran before."""
    deps = runtime.context
    incident_id = state["incident"]["id"]
    await page_oncall(deps, incident_id, f"rtem escalated incident {incident_id}: {state.get('resolution')}",
                      "escalation")
    return {}


def close(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    versions = deps.versions()
    status = state.get("status") or "diagnosed"
    actions = state.get("actions", [])
    deps.store.save_diagnosis(incident["id"], status=status, root_causes=state.get("root_causes", []),
                              actions=actions, versions=versions, mttr_s=state.get("mttr_s"),
                              resolution=state.get("resolution"))
    top = state.get("root_causes", [])[:1]
    reasons = [state["resolution"]] if state.get("resolution") else []
    if deps.dry_run:
        reasons.append("dry run: actions are proposals with verdicts; nothing was executed")
    deps.audit.append(
        "incident.closed" if status in ("resolved", "escalated") else "incident.diagnosed",
        incident_id=incident["id"], node="close", inputs={"event_count": incident["event_count"]},
        decision={"status": status, "root_cause": top[0]["entity"] if top else None, "mttr_s": state.get("mttr_s"),
                  "actions": [[a["type"], a["target"], a["verdict"], a.get("status")] for a in actions]},
        reasons=reasons, versions=versions)
    return {"status": status}


def _alert_recovery(deps: Deps, incident_id: str) -> core.AlertRecovery | None:
    """What the incident's alerts say: every one resolved and no signal came after, or None
    (docs/lifecycle.md). The resolutions were recorded with the incident by triage."""
    alerts = core.alert_states(deps.store.alert_events(incident_id))
    if not alerts:
        return None
    row = deps.store.incident(incident_id)
    return core.alerts_recovered(alerts, row["last_ts"] if row else None)


def _stand_down(deps: Deps, incident_id: str, actions: list[PlannedAction], recovered: core.AlertRecovery,
                node: str) -> list[PlannedAction]:
    """Skip what has not run, with the reason, and record it once: the alerts say it is over."""
    when = "after acting" if core.remedies_done(actions) else "before rtem acted"
    reason = f"the alert resolved {when} ({', '.join(recovered.alerts)}): nothing more is needed"
    actions, skipped = core.stand_down(actions, reason)
    if skipped:
        deps.audit.append("actions.stood_down", incident_id=incident_id, node=node,
                          inputs={"alerts": list(recovered.alerts), "resolved_at": recovered.at},
                          decision={"skipped": [a.label for a in skipped]}, reasons=[reason],
                          evidence=list(recovered.evidence), versions=deps.versions())
    return actions
