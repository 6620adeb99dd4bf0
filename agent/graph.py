"""The incident graph: one LangGraph thread per incident (thread_id = incident id).

    gather_context → diagnose → propose → guard → execute ⟲ ⇄ approve → verify → [escalate] → close

With `dry_run` (rtem analyze) the thread ends after the guard: actions stay proposals with verdicts.
`execute` runs one action a pass, a page first, and everything that does not wait for a person before
`approve` waits; `approve` and `execute` wait with LangGraph `interrupt()` (for a person or the kill
switch) and the service resumes them, also after a restart, from the SQLite checkpoint. The plan's
transitions are the pure functions of `agent.incident`; nodes load the state, call them, record.
An escalated incident always pages, with the reason (`escalate`).

Nodes are small functions over the state; what they need from the outside world (store, audit log,
reasoner, guard) comes in through the run's context, so a test can run a node as a plain function.
Every node that decides something writes a decision record with its inputs, its reasons, and the
versions it used. Side effects happen only in `_run_step`, behind the ledger's idempotency key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypedDict

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

from bus import parse_time
from rules import Proposal, Topology, Verdict

from .audit import AuditLog
from .executors import Executors, Step
from .ledger import Ledger, step_key
from . import metrics
from .telemetry import tracer
from . import incident as core
from .incident import PAGE, ActionStatus, PlannedAction, Policy, StepOutcome
from .models import IncidentView, ReasonerRun, RootCause
from .reasoner import HISTORY_WINDOW, learn_history
from .store import IncidentStore


class Reasoner(Protocol):
    """Ranks causes and proposes actions from one view of the incident (events, topology, history),
    always saying how it decided (`ReasonerRun`: model, prompt hash, fallbacks)."""

    name: str
    version: str

    def diagnose(self, view: IncidentView, limit: int = 5) -> tuple[list[RootCause], ReasonerRun]: ...
    def propose(self, view: IncidentView, causes: Sequence[RootCause],
                diagnosis: ReasonerRun | None = None) -> tuple[list[Proposal], ReasonerRun]: ...


class GuardLike(Protocol):
    def evaluate(self, proposal: Proposal, **context: Any) -> Verdict: ...


@dataclass
class Deps:
    store: IncidentStore
    audit: AuditLog
    reasoner: Reasoner
    guard: GuardLike
    topology: Topology
    versions: dict[str, str] = field(default_factory=dict)
    contracts: dict[str, Any] = field(default_factory=dict)
    ledger: Ledger | None = None
    executors: Executors | None = None
    policy: Policy = field(default_factory=Policy)
    dry_run: bool = True
    watermark: Callable[[], float] = lambda: 0.0
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)


class IncidentState(TypedDict, total=False):
    incident_id: str
    incident: dict[str, Any]
    root_causes: list[dict[str, Any]]
    diagnosis: dict[str, Any]
    proposals: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    acted_at: float
    saga: dict[str, Any]
    recovered_at: float
    mttr_s: float
    resolution: str
    dry_run: bool
    status: str


def gather_context(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    row = runtime.context.store.incident(state["incident_id"])
    if row is None:
        raise LookupError(f"incident {state['incident_id']} is not in the store")
    keep = ("id", "opened_at", "updated_at", "status", "severity", "entities", "detections", "event_count",
            "signal_count")
    return {"incident": {k: row[k] for k in keep}, "dry_run": runtime.context.dry_run}


def diagnose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    view = _view(deps, incident["id"])
    causes, run = deps.reasoner.diagnose(view)
    reasons = [f"{c.entity}: {c.explanation}" for c in causes[:3]] or ["no candidate had evidence"]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    deps.audit.append(
        "causes.ranked", incident_id=incident["id"], node="diagnose",
        inputs={"events": len(view.events), "entities": incident["entities"], "topology": deps.topology.digest,
                "earlier_incidents": view.history.incidents if view.history is not None else 0},
        decision={"root_causes": [c.model_dump() for c in causes], "reasoner": run.model_dump()},
        reasons=reasons, evidence=causes[0].evidence if causes else [], versions=_versions(deps, run))
    return {"root_causes": [c.model_dump() for c in causes], "diagnosis": run.model_dump()}


def propose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    causes = [RootCause.model_validate(c) for c in state.get("root_causes", [])]
    diagnosis = ReasonerRun.model_validate(state["diagnosis"]) if state.get("diagnosis") else None
    proposals, run = deps.reasoner.propose(_view(deps, state["incident"]["id"]), causes, diagnosis)
    reasons = [f"{p.type} on {p.target}: {p.reason}" for p in proposals]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    deps.audit.append(
        "actions.proposed", incident_id=state["incident"]["id"], node="propose",
        inputs={"root_causes": [c.entity for c in causes]},
        decision={"proposals": [p.model_dump() for p in proposals], "reasoner": run.model_dump()},
        reasons=reasons, evidence=causes[0].evidence[:5] if causes else [], versions=_versions(deps, run))
    return {"proposals": [p.model_dump() for p in proposals]}


def guard(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    at = parse_time(incident["updated_at"])
    # Allowed actions go to the guard's action history, which its rate limits and caps count
    # (agent/action_history.py); the record keeps what `rtem rules replay` needs to judge it again.
    history = getattr(deps.guard, "history", None)
    judged = []
    for raw in state.get("proposals", []):
        proposal = Proposal.model_validate(raw)
        seen = history.watermark() if hasattr(history, "watermark") else None
        verdict = deps.guard.evaluate(
            proposal, topology=deps.topology, incident_entities=incident["entities"],
            incident_id=incident["id"], incident_severity=incident["severity"], at=at)
        if verdict.outcome == "allow" and history is not None:
            history.record(proposal.type, proposal.target, at, incident_id=incident["id"],
                           key=f"{incident['id']}#{len(judged)}@{incident['updated_at']}")
        metrics.VERDICTS.labels(outcome=verdict.outcome).inc()
        deps.audit.append(
            "action.verdict", incident_id=incident["id"], node="guard",
            inputs={"proposal": proposal.model_dump(),
                    "context": {"incident_entities": incident["entities"], "incident_severity": incident["severity"],
                                "at": incident["updated_at"], "history_seq": seen}},
            decision={"outcome": verdict.outcome, "rules": verdict.rules, "approver_role": verdict.approver_role},
            reasons=verdict.reasons, versions={**_versions(deps), "ruleset": verdict.ruleset,
                                               "contract": verdict.contract or ""})
        judged.append((proposal, verdict))
    compensations = {name: contract.compensation.model_dump() for name, contract in deps.contracts.items()}
    return {"actions": _records(core.plan(judged, compensations, dry_run=deps.dry_run))}


def approve(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Wait for people on the actions that need approval, while everything that does not wait runs.

    One pass does one thing: stamp and record the request (once), or apply the decisions the ledger
    has (written by `rtem approve`, the API or the console) and record each change once, or wait in
    `interrupt()` when nothing changed. Waiting is the last thing a pass does, so a resumed pass
    repeats nothing."""
    deps = runtime.context
    incident_id = state["incident"]["id"]
    actions = _plan(state)
    now = deps.clock()
    pending = core.waiting(actions)
    if any(a.requested_at is None for a in pending):
        if not deps.audit.records(incident_id=incident_id, kind="approval.requested"):
            deps.audit.append(
                "approval.requested", incident_id=incident_id, node="approve",
                inputs={"actions": [a.label for a in pending]},
                decision={"approver_roles": sorted({a.approver_role or "approver" for a in pending})},
                reasons=[a.reason for a in pending], versions=_versions(deps))
        return {"actions": _records(core.request_approval(actions, now))}
    actions, changed = core.apply_decisions(actions, deps.ledger.decisions(incident_id), now, deps.policy)
    if not changed:
        asked = min(a.requested_at for a in pending)
        interrupt({"waiting": "approval", "incident_id": incident_id, "asked_at": asked.isoformat(),
                   "actions": [a.index for a in pending], "labels": [a.label for a in pending]})
        return {}
    for action in changed:
        by = action.approval.by if action.approval else "rtem"
        deps.audit.append("action.approval", incident_id=incident_id, node="approve",
                          inputs={"action": action.label}, decision={"status": action.status.value, "by": by},
                          reasons=[action.status_reason], versions=_versions(deps))
    return {"actions": _records(actions)}


async def execute(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Run the next runnable action (a page first), one per pass, so each is checkpointed on its own.

    The kill switch is checked before anything happens; an approved action must still be fresh and
    is judged by the guard again on the current state. A failure compensates the steps already done,
    in reverse order, and skips the rest with the reason (a saga)."""
    deps = runtime.context
    incident = state["incident"]
    actions = _plan(state)
    action = core.next_runnable(actions)
    if action is None:
        return {}
    if deps.ledger.paused():
        interrupt({"waiting": "resume", "incident_id": incident["id"], "reason": "execution is paused (rtem pause)"})
    if action.status == ActionStatus.APPROVED:
        refused = _stale(deps, incident, action)
        if refused:
            status, reason, rules = refused
            deps.audit.append("action.blocked", incident_id=incident["id"], node="execute",
                              inputs={"action": action.label}, decision={"status": status.value},
                              reasons=[reason], versions=_versions(deps))
            return {"actions": _records(core.refuse(actions, action.index, status, reason, rules))}
    outcome = await _run_step(deps, incident["id"], action, "do", action.params)
    actions = core.record_outcome(actions, action.index, outcome)
    update: IncidentState = {"actions": _records(actions)}
    if outcome.ok:
        if action.type != PAGE:
            update["acted_at"] = max(state.get("acted_at") or 0.0, deps.watermark())
        history = getattr(deps.guard, "history", None)
        if action.verdict == "require_approval" and history is not None:
            # The guard recorded allowed actions when it judged them; approved ones count once they ran.
            history.record(action.type, action.target, datetime.fromtimestamp(deps.watermark(), timezone.utc),
                           incident_id=incident["id"], key=step_key(incident["id"], action.index))
        return update
    actions, undo = core.fail_plan(actions, action.index)
    compensated = []
    for done in undo:
        params = ((done.outcome.result if done.outcome else {}) or {}).get("compensate_with") or done.params
        result = await _run_step(deps, incident["id"], done, "compensate", params)
        actions = core.mark_compensated(actions, done.index, result.ok, result.error)
        compensated.append({"action": done.label, "compensated": result.ok, "error": result.error})
    update["actions"] = _records(actions)
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
        _plan(state), acted_at=acted_at, watermark=deps.watermark(), opened_ts=_ts(incident["opened_at"]),
        last_signal=deps.store.last_signal(incident["id"], after_ts=acted_at) if acted_at is not None else None,
        policy=deps.policy)
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
    versions = _versions(deps)
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


async def page_oncall(deps: Deps, incident_id: str, summary: str, why: str) -> StepOutcome | None:
    """Page a person through the notify_oncall contract, once per (incident, why), and record it as an
    `incident.paged` decision: the outcome, or that no pager is configured."""
    contract = deps.contracts.get(PAGE)
    if deps.dry_run or contract is None or deps.executors is None or deps.ledger is None:
        deps.audit.append("incident.paged", incident_id=incident_id, node=why, inputs={"summary": summary},
                          decision={"paged": False}, versions=_versions(deps),
                          reasons=["nobody was paged: " + ("dry run" if deps.dry_run else "no notify_oncall contract "
                                                           "or executor is configured")])
        return None
    key = step_key(incident_id, why, "page")
    row = deps.ledger.start(key, incident_id, -1, "page", PAGE, incident_id, {"summary": summary})
    if row["status"] != "started":
        return StepOutcome.model_validate(row["outcome"])
    outcome = (await deps.executors.run(contract, Step(key, incident_id, PAGE, incident_id,
                                                       {"summary": summary[:2000]}, "page"))).to_dict()
    deps.ledger.finish(key, outcome["ok"], {**outcome, "key": key})
    deps.audit.append("incident.paged", incident_id=incident_id, node=why,
                      inputs={"summary": summary, "idempotency_key": key},
                      decision={"paged": outcome["ok"], "result": outcome["result"]},
                      reasons=[outcome["error"] or f"paged about {why}: {summary}"], versions=_versions(deps))
    return StepOutcome.model_validate({**outcome, "key": key})


async def _run_step(deps: Deps, incident_id: str, action: PlannedAction, kind: str,
                    params: dict[str, Any]) -> StepOutcome:
    """One step, exactly once: the ledger says whether it already ran; the key goes to the target."""
    key = step_key(incident_id, action.index, kind)
    step_type = action.type if kind == "do" else (action.compensation or {})["action"]
    row = deps.ledger.start(key, incident_id, action.index, kind, step_type, action.target, params)
    if row["status"] != "started":
        return StepOutcome.model_validate(row["outcome"])
    step = Step(key, incident_id, step_type, action.target, params, kind)
    outcome = (await deps.executors.run(deps.contracts[step_type], step)).to_dict()
    outcome["key"] = key
    deps.ledger.finish(key, outcome["ok"], outcome)
    deps.audit.append(
        "action.executed" if kind == "do" else "action.compensated", incident_id=incident_id, node="execute",
        inputs={"action": action.label, "params": params, "idempotency_key": key, "attempts": outcome["attempts"]},
        decision={"ok": outcome["ok"], "result": outcome["result"], "breaker_open": outcome["breaker_open"]},
        reasons=[outcome["error"]] if outcome["error"] else [f"{step_type} on {action.target} succeeded"],
        versions=_versions(deps))
    return StepOutcome.model_validate(outcome)


def _stale(deps: Deps, incident: dict[str, Any], action: PlannedAction):
    """Why an approved action must not run now: its approval expired, or the guard says no today."""
    reason = core.stale_approval(action, deps.clock(), deps.policy)
    if reason:
        return ActionStatus.EXPIRED, reason, []
    verdict = deps.guard.evaluate(
        Proposal(type=action.type, target=action.target, params=action.params, proposed_by=action.proposed_by),
        topology=deps.topology, incident_entities=incident["entities"], incident_id=incident["id"],
        incident_severity=incident["severity"], at=datetime.fromtimestamp(deps.watermark(), timezone.utc))
    if verdict.outcome == "deny":
        return ActionStatus.BLOCKED, "the guard now denies it: " + verdict.reason, verdict.rules
    return None


def _plan(state: IncidentState) -> list[PlannedAction]:
    return [PlannedAction.model_validate(a) for a in state.get("actions", [])]


def _records(actions: Sequence[PlannedAction]) -> list[dict[str, Any]]:
    return [a.to_record() for a in actions]


def _ts(text: str) -> float:
    return parse_time(text).timestamp()


def _after_guard(state: IncidentState) -> str:
    return "close" if state.get("dry_run", True) else "execute"


def _entry(state: IncidentState) -> str:
    return "verify" if state.get("status") == "verifying" else "gather_context"


def _after_verify(state: IncidentState) -> str:
    status = state.get("status")
    return "escalate" if status == "escalated" else "close" if status == "resolved" else END


def _next(state: IncidentState) -> str:
    """After a step or an approval pass: run what can run, else wait for people, else verify."""
    actions = _plan(state)
    if state.get("saga"):
        return "verify"
    if core.next_runnable(actions) is not None:
        return "execute"
    return "approve" if core.waiting(actions) else "verify"


def _view(deps: Deps, incident_id: str) -> IncidentView:
    """The incident as a reasoner sees it, the same in diagnose and propose: its events, the topology,
    and the background learned from the incidents that opened before its first event, never later."""
    events = deps.store.events(incident_id)
    history = None
    if events:
        incidents, shapes = deps.store.past_event_shapes(min(e.ts for e in events), limit=HISTORY_WINDOW,
                                                         exclude=incident_id)
        history = learn_history(incidents, shapes, deps.topology)
    return IncidentView(incident_id, events, deps.topology, history)


def _versions(deps: Deps, run: ReasonerRun | None = None) -> dict[str, str]:
    versions = {**deps.versions, "reasoner": f"{deps.reasoner.name}/{deps.reasoner.version}"}
    if run is not None:
        versions.update(run.versions)
    return versions


def build_graph():
    graph = StateGraph(IncidentState, context_schema=Deps)
    for name, node in (("gather_context", gather_context), ("diagnose", diagnose), ("propose", propose),
                       ("guard", guard), ("approve", approve), ("execute", execute), ("verify", verify),
                       ("escalate", escalate), ("close", close)):
        graph.add_node(name, node)
    graph.add_conditional_edges(START, _entry, ["gather_context", "verify"])
    graph.add_edge("gather_context", "diagnose")
    graph.add_edge("diagnose", "propose")
    graph.add_edge("propose", "guard")
    graph.add_conditional_edges("guard", _after_guard, ["execute", "close"])
    graph.add_conditional_edges("execute", _next, ["execute", "approve", "verify"])
    graph.add_conditional_edges("approve", _next, ["execute", "approve", "verify"])
    graph.add_conditional_edges("verify", _after_verify, ["escalate", "close", END])
    graph.add_edge("escalate", "close")
    graph.add_edge("close", END)
    return graph


class IncidentGraph:
    """The compiled graph with its SQLite checkpointer; one thread per incident.

    `run(incident_id)` starts a thread, or re-enters verification of one that is verifying;
    `resume(incident_id)` continues one that waits in an interrupt (for an approval or the kill
    switch). Both return the state and what the thread waits for, if anything.
    """

    def __init__(self, checkpoint_path: str | Path, deps: Deps):
        self.checkpoint_path = str(checkpoint_path)
        self.deps = deps
        self._conn: aiosqlite.Connection | None = None
        self.app = None

    async def open(self) -> IncidentGraph:
        self._conn = await aiosqlite.connect(self.checkpoint_path)
        self.app = build_graph().compile(checkpointer=AsyncSqliteSaver(self._conn))
        return self

    async def run(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        with tracer().start_as_current_span("incident.graph", attributes={"rtem.incident": incident_id}):
            await self.app.ainvoke({"incident_id": incident_id}, _config(incident_id), context=self.deps)
        return await self.status(incident_id)

    async def resume(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        await self.app.ainvoke(Command(resume=True), _config(incident_id), context=self.deps)
        return await self.status(incident_id)

    async def proceed(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        """Move a started thread on: resume it if it waits, continue it if a crash cut it short."""
        snapshot = await self.app.aget_state(_config(incident_id))
        if any(task.interrupts for task in snapshot.tasks):
            return await self.resume(incident_id)
        if snapshot.next:
            await self.app.ainvoke(None, _config(incident_id), context=self.deps)
            return await self.status(incident_id)
        return await self.run(incident_id)

    async def status(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        snapshot = await self.app.aget_state(_config(incident_id))
        waiting = None
        for task in snapshot.tasks:
            for pending in task.interrupts:
                waiting = pending.value
        return snapshot.values, waiting

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _config(incident_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": incident_id}}
