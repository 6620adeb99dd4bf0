"""The incident graph: one LangGraph thread per incident (thread_id = incident id).

    gather_context → diagnose → propose → guard → approve → execute (one action a pass) → verify → close

With `dry_run` (rtem analyze) the thread ends after the guard: actions stay proposals with verdicts.
`approve`, `execute` and `verify` wait with LangGraph `interrupt()` (for a person, the kill switch, or
recovery evidence); the service resumes them, also after a restart, from the SQLite checkpoint.

Nodes are small functions over the state; what they need from the outside world (store, audit log,
reasoner, guard) comes in through the run's context, so a test can run a node as a plain function.
Every node that decides something writes a decision record with its inputs, its reasons, and the
versions it used. Side effects happen only in `_run_step`, behind the ledger's idempotency key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
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
from .models import ReasonerRun, RootCause
from .reasoner import HISTORY_WINDOW, History, learn_history
from .store import IncidentStore


class Reasoner(Protocol):
    """Ranks causes and proposes actions. A reasoner may return `(answer, ReasonerRun)` pairs to say
    how it decided (an LLM reasoner does: model, prompt hash, fallbacks); a plain list means it decided
    on its own, deterministically. A `diagnose` with a `history` keyword also gets the background learned
    from earlier incidents (`agent.reasoner.History`)."""

    name: str
    version: str

    def diagnose(self, events, topology: Topology, limit: int = 5) -> list[RootCause] | tuple[list[RootCause], ReasonerRun]: ...
    def propose(self, causes, topology: Topology) -> list[Proposal] | tuple[list[Proposal], ReasonerRun]: ...


class GuardLike(Protocol):
    def evaluate(self, proposal: Proposal, **context: Any) -> Verdict: ...


@dataclass(frozen=True)
class Policy:
    """How long approvals live and how recovery is judged (event time, except approvals: people)."""

    approval_ttl_s: float = 15 * 60
    verify_quiet_s: float = 60.0
    verify_deadline_s: float = 600.0


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


class IncidentState(TypedDict, total=False):
    incident_id: str
    incident: dict[str, Any]
    root_causes: list[dict[str, Any]]
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
    events = deps.store.events(incident["id"])
    extra: dict[str, Any] = {}
    if events and _takes_history(deps.reasoner):
        extra["history"] = _history(deps, incident["id"], min(e.ts for e in events))
    causes, run = _answer(deps, deps.reasoner.diagnose(events, deps.topology, **extra))
    reasons = [f"{c.entity}: {c.explanation}" for c in causes[:3]] or ["no candidate had evidence"]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    deps.audit.append(
        "causes.ranked", incident_id=incident["id"], node="diagnose",
        inputs={"events": len(events), "entities": incident["entities"], "topology": deps.topology.digest,
                "earlier_incidents": extra["history"].incidents if "history" in extra else 0},
        decision={"root_causes": [c.model_dump() for c in causes], "reasoner": run.model_dump()},
        reasons=reasons, evidence=causes[0].evidence if causes else [], versions=_versions(deps, run))
    return {"root_causes": [c.model_dump() for c in causes]}


def propose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    causes = [RootCause.model_validate(c) for c in state.get("root_causes", [])]
    proposals, run = _answer(deps, deps.reasoner.propose(causes, deps.topology))
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
    actions = []
    for raw in state.get("proposals", []):
        proposal = Proposal.model_validate(raw)
        seen = history.watermark() if hasattr(history, "watermark") else None
        verdict = deps.guard.evaluate(
            proposal, topology=deps.topology, incident_entities=incident["entities"],
            incident_id=incident["id"], incident_severity=incident["severity"], at=at)
        if verdict.outcome == "allow" and history is not None:
            history.record(proposal.type, proposal.target, at, incident_id=incident["id"],
                           key=f"{incident['id']}#{len(actions)}@{incident['updated_at']}")
        metrics.VERDICTS.labels(outcome=verdict.outcome).inc()
        deps.audit.append(
            "action.verdict", incident_id=incident["id"], node="guard",
            inputs={"proposal": proposal.model_dump(),
                    "context": {"incident_entities": incident["entities"], "incident_severity": incident["severity"],
                                "at": incident["updated_at"], "history_seq": seen}},
            decision={"outcome": verdict.outcome, "rules": verdict.rules, "approver_role": verdict.approver_role},
            reasons=verdict.reasons, versions={**_versions(deps), "ruleset": verdict.ruleset,
                                               "contract": verdict.contract or ""})
        contract = deps.contracts.get(proposal.type)
        actions.append({"index": len(actions), "type": proposal.type, "target": proposal.target,
                        "params": proposal.params, "verdict": verdict.outcome, "rules": verdict.rules,
                        "reason": verdict.reason, "approver_role": verdict.approver_role,
                        "proposed_by": proposal.proposed_by, "executed": False,
                        "status": "proposed" if verdict.outcome != "deny" else "denied",
                        "compensation": contract.compensation.model_dump() if contract else None})
    return {"actions": actions}


def approve(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Wait for a person on every action that needs approval. The decision is read from the ledger
    (written by `rtem approve`/`reject`), so it survives restarts; the node's only effect is its one
    "approval.requested" record, written once however often the node runs."""
    deps = runtime.context
    incident_id = state["incident"]["id"]
    actions = [dict(a) for a in state.get("actions", [])]
    pending = [a for a in actions if a["verdict"] == "require_approval" and a["status"] == "proposed"]
    if not pending:
        return {}
    requested = deps.audit.records(incident_id=incident_id, kind="approval.requested")
    if not requested:
        requested = [deps.audit.append(
            "approval.requested", incident_id=incident_id, node="approve",
            inputs={"actions": [_label(a) for a in pending]},
            decision={"approver_roles": sorted({a["approver_role"] or "approver" for a in pending})},
            reasons=[a["reason"] for a in pending], versions=_versions(deps))]
    asked_at = requested[0].at
    decisions = deps.ledger.decisions(incident_id)
    now = datetime.now(timezone.utc)
    undecided = []
    for action in pending:
        decision = decisions.get(action["index"])
        if decision is None:
            if (now - asked_at).total_seconds() > deps.policy.approval_ttl_s:
                action["status"] = "expired"
            else:
                undecided.append(action)
            continue
        action["approval"] = decision
        action["status"] = "approved" if decision["decision"] == "approve" else "rejected"
    if undecided:
        # The service resumes this only once every pending action is decided or the request expired,
        # so on resume the loop above finds nothing undecided and interrupt() is not reached again.
        interrupt({"waiting": "approval", "incident_id": incident_id, "asked_at": asked_at.isoformat(),
                   "actions": [a["index"] for a in undecided], "labels": [_label(a) for a in undecided]})
    for action in pending:  # recorded only once every pending action is decided: the node will not rerun
        by = (action.get("approval") or {}).get("by", "rtem")
        reason = (action.get("approval") or {}).get("reason") or (
            "nobody decided before the request expired" if action["status"] == "expired" else f"{action['status']} by {by}")
        deps.audit.append("action.approval", incident_id=incident_id, node="approve",
                          inputs={"action": _label(action)}, decision={"status": action["status"], "by": by},
                          reasons=[reason], versions=_versions(deps))
    return {"actions": _merge(actions, pending)}


async def execute(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Run the next runnable action of the plan, one per pass, so each is checkpointed on its own.

    The kill switch is checked before anything happens; an approved action must still be fresh and
    is judged by the guard again on the current state. A failure compensates the steps already done,
    in reverse order, and stops the plan (a saga)."""
    deps = runtime.context
    incident = state["incident"]
    actions = [dict(a) for a in state.get("actions", [])]
    action = _next_runnable(actions)
    if action is None:
        return {}
    if deps.ledger.paused():
        interrupt({"waiting": "resume", "incident_id": incident["id"], "reason": "execution is paused (rtem pause)"})
    if action["status"] == "approved":
        blocked = _stale(deps, incident, action)
        if blocked:
            action["status"], action["outcome"] = blocked
            deps.audit.append("action.blocked", incident_id=incident["id"], node="execute",
                              inputs={"action": _label(action)}, decision={"status": action["status"]},
                              reasons=[action["outcome"]["error"]], versions=_versions(deps))
            return {"actions": actions}
    outcome = await _run_step(deps, incident["id"], action, "do", action["params"])
    action["executed"] = outcome["ok"]
    action["outcome"] = outcome
    action["status"] = "done" if outcome["ok"] else "failed"
    update: IncidentState = {"actions": actions}
    if outcome["ok"]:
        update["acted_at"] = max(state.get("acted_at") or 0.0, deps.watermark())
        history = getattr(deps.guard, "history", None)
        if action["verdict"] == "require_approval" and history is not None:
            # The guard recorded allowed actions when it judged them; approved ones count once they ran.
            history.record(action["type"], action["target"], datetime.fromtimestamp(update["acted_at"], timezone.utc),
                           incident_id=incident["id"], key=step_key(incident["id"], action["index"]))
        return update
    for other in actions:
        if other["status"] in ("proposed", "approved") and other is not action:
            other["status"] = "skipped"
    compensated = [await _compensate(deps, incident["id"], done)
                   for done in reversed([a for a in actions if a["status"] == "done"])]
    update["saga"] = {"failed": _label(action), "error": outcome["error"], "compensated": compensated}
    return update


def verify(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    """Look for evidence of recovery in event time: no new signal on the incident's entities for
    `verify_quiet_s` after the last action, before `verify_deadline_s`. Until then the thread ends in
    status "verifying" and the service starts it again (at this node) when event time has moved."""
    deps = runtime.context
    incident = state["incident"]
    if state.get("saga"):
        saga = state["saga"]
        return {"status": "escalated", "resolution": f"{saga['failed']} failed: {saga['error']}; "
                                                     f"{len(saga['compensated'])} completed step(s) compensated"}
    remedies = [a for a in state.get("actions", []) if a["status"] == "done" and a["type"] != "notify_oncall"]
    if not remedies:
        why = sorted({a["status"] for a in state.get("actions", []) if a["type"] != "notify_oncall"})
        return {"status": "escalated",
                "resolution": f"no remediation ran ({', '.join(why) or 'none proposed'}); a person must act"}
    acted_at = state["acted_at"]
    watermark = deps.watermark()
    last_signal = deps.store.last_signal(incident["id"], after_ts=acted_at)
    quiet_since = max(acted_at, last_signal or acted_at)
    if watermark - quiet_since >= deps.policy.verify_quiet_s:
        mttr = quiet_since - _ts(incident["opened_at"])
        return {"status": "resolved", "recovered_at": quiet_since, "mttr_s": round(mttr, 3),
                "resolution": f"no new signal for {deps.policy.verify_quiet_s:.0f}s of event time after acting"}
    if watermark - acted_at > deps.policy.verify_deadline_s:
        return {"status": "escalated", "resolution": f"still showing signals {deps.policy.verify_deadline_s:.0f}s "
                                                     "of event time after acting; a person must look"}
    return {"status": "verifying"}


def close(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    versions = _versions(deps)
    status = state.get("status") or "diagnosed"
    deps.store.save_diagnosis(incident["id"], status=status, root_causes=state.get("root_causes", []),
                              actions=state.get("actions", []), versions=versions, mttr_s=state.get("mttr_s"),
                              resolution=state.get("resolution"))
    top = state.get("root_causes", [])[:1]
    reasons = [state["resolution"]] if state.get("resolution") else []
    if deps.dry_run:
        reasons.append("dry run: actions are proposals with verdicts; nothing was executed")
    deps.audit.append(
        "incident.closed" if status in ("resolved", "escalated") else "incident.diagnosed",
        incident_id=incident["id"], node="close", inputs={"event_count": incident["event_count"]},
        decision={"status": status, "root_cause": top[0]["entity"] if top else None, "mttr_s": state.get("mttr_s"),
                  "actions": [[a["type"], a["target"], a["verdict"], a.get("status")] for a in state.get("actions", [])]},
        reasons=reasons, versions=versions)
    return {"status": status}


async def _run_step(deps: Deps, incident_id: str, action: dict[str, Any], kind: str,
                    params: dict[str, Any]) -> dict[str, Any]:
    """One step, exactly once: the ledger says whether it already ran; the key goes to the target."""
    key = step_key(incident_id, action["index"], kind)
    step_type = action["type"] if kind == "do" else action["compensation"]["action"]
    row = deps.ledger.start(key, incident_id, action["index"], kind, step_type, action["target"], params)
    if row["status"] != "started":
        return row["outcome"]
    step = Step(key, incident_id, step_type, action["target"], params, kind)
    outcome = (await deps.executors.run(deps.contracts[step_type], step)).to_dict()
    outcome["key"] = key
    deps.ledger.finish(key, outcome["ok"], outcome)
    deps.audit.append(
        "action.executed" if kind == "do" else "action.compensated", incident_id=incident_id, node="execute",
        inputs={"action": _label(action), "params": params, "idempotency_key": key, "attempts": outcome["attempts"]},
        decision={"ok": outcome["ok"], "result": outcome["result"], "breaker_open": outcome["breaker_open"]},
        reasons=[outcome["error"]] if outcome["error"] else [f"{step_type} on {action['target']} succeeded"],
        versions=_versions(deps))
    return outcome


async def _compensate(deps: Deps, incident_id: str, action: dict[str, Any]) -> dict[str, Any]:
    compensation = action.get("compensation") or {}
    if not compensation.get("action"):
        action["status"] = "done_uncompensable"
        return {"action": _label(action), "compensated": False, "note": compensation.get("description", "")}
    params = (action.get("outcome") or {}).get("result", {}).get("compensate_with") or action["params"]
    outcome = await _run_step(deps, incident_id, action, "compensate", params)
    action["status"] = "compensated" if outcome["ok"] else "compensation_failed"
    return {"action": _label(action), "compensated": outcome["ok"], "error": outcome["error"]}


def _stale(deps: Deps, incident: dict[str, Any], action: dict[str, Any]):
    """Why an approved action must not run now: its approval expired, or the guard says no today."""
    approval = action.get("approval") or {}
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(approval["at"])).total_seconds() if approval else 0
    if age > deps.policy.approval_ttl_s:
        return "expired", {"ok": False, "result": {}, "attempts": 0, "breaker_open": False,
                           "error": f"the approval is {age:.0f}s old, past its {deps.policy.approval_ttl_s:.0f}s lifetime"}
    verdict = deps.guard.evaluate(
        Proposal(type=action["type"], target=action["target"], params=action["params"],
                 proposed_by=action["proposed_by"]),
        topology=deps.topology, incident_entities=incident["entities"], incident_id=incident["id"],
        incident_severity=incident["severity"], at=datetime.fromtimestamp(deps.watermark(), timezone.utc))
    if verdict.outcome == "deny":
        return "blocked", {"ok": False, "result": {}, "attempts": 0, "breaker_open": False,
                           "error": "the guard now denies it: " + verdict.reason, "rules": verdict.rules}
    return None


def _next_runnable(actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    for action in actions:
        if action["status"] == "approved" or (action["status"] == "proposed" and action["verdict"] == "allow"):
            return action
    return None


def _merge(actions: list[dict[str, Any]], changed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_index = {a["index"]: a for a in changed}
    return [by_index.get(a["index"], a) for a in actions]


def _label(action: dict[str, Any]) -> str:
    return f"#{action['index']} {action['type']} on {action['target']}"


def _ts(text: str) -> float:
    return parse_time(text).timestamp()


def _after_guard(state: IncidentState) -> str:
    return "close" if state.get("dry_run", True) else "approve"


def _entry(state: IncidentState) -> str:
    return "verify" if state.get("status") == "verifying" else "gather_context"


def _after_verify(state: IncidentState) -> str:
    return "close" if state.get("status") in ("resolved", "escalated") else END


def _after_execute(state: IncidentState) -> str:
    if state.get("saga") or _next_runnable(state.get("actions", [])) is None:
        return "verify"
    return "execute"


def _history(deps: Deps, incident_id: str, start: float) -> History:
    """Background noise learned from the incidents that opened before this one's first event, never later."""
    incidents, shapes = deps.store.past_event_shapes(start, limit=HISTORY_WINDOW, exclude=incident_id)
    return learn_history(incidents, shapes, deps.topology)


def _takes_history(reasoner: Reasoner) -> bool:
    """Reasoners that learn from earlier incidents say so with a `history` keyword on `diagnose`."""
    return "history" in inspect.signature(reasoner.diagnose).parameters


def _answer(deps: Deps, result):
    if isinstance(result, tuple):
        return result
    return result, ReasonerRun(reasoner=deps.reasoner.name)


def _versions(deps: Deps, run: ReasonerRun | None = None) -> dict[str, str]:
    versions = {**deps.versions, "reasoner": f"{deps.reasoner.name}/{deps.reasoner.version}"}
    if run is not None:
        versions.update(run.versions)
    return versions


def build_graph():
    graph = StateGraph(IncidentState, context_schema=Deps)
    for name, node in (("gather_context", gather_context), ("diagnose", diagnose), ("propose", propose),
                       ("guard", guard), ("approve", approve), ("execute", execute), ("verify", verify),
                       ("close", close)):
        graph.add_node(name, node)
    graph.add_conditional_edges(START, _entry, ["gather_context", "verify"])
    graph.add_edge("gather_context", "diagnose")
    graph.add_edge("diagnose", "propose")
    graph.add_edge("propose", "guard")
    graph.add_conditional_edges("guard", _after_guard, ["approve", "close"])
    graph.add_edge("approve", "execute")
    graph.add_conditional_edges("execute", _after_execute, ["execute", "verify"])
    graph.add_conditional_edges("verify", _after_verify, ["close", END])
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
