"""The incident graph: one LangGraph thread per incident (thread_id = incident id).

    gather_context → diagnose → propose → guard → close

Nodes are small functions over the state; what they need from the outside world (store, audit log,
reasoner, guard) comes in through the run's context, so a test can run a node as a plain function.
Every node that decides something writes a decision record with its inputs, its reasons, and the
versions it used. Execution comes later; here actions end as proposals with verdicts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from bus import parse_time
from rules import Proposal, Topology, Verdict

from .audit import AuditLog
from .models import ReasonerRun, RootCause
from .store import IncidentStore


class Reasoner(Protocol):
    """Ranks causes and proposes actions. A reasoner may return `(answer, ReasonerRun)` pairs to say
    how it decided (an LLM reasoner does: model, prompt hash, fallbacks); a plain list means it decided
    on its own, deterministically."""

    name: str
    version: str

    def diagnose(self, events, topology: Topology, limit: int = 5) -> list[RootCause] | tuple[list[RootCause], ReasonerRun]: ...
    def propose(self, causes, topology: Topology) -> list[Proposal] | tuple[list[Proposal], ReasonerRun]: ...


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


class IncidentState(TypedDict, total=False):
    incident_id: str
    incident: dict[str, Any]
    root_causes: list[dict[str, Any]]
    proposals: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    status: str


def gather_context(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    row = runtime.context.store.incident(state["incident_id"])
    if row is None:
        raise LookupError(f"incident {state['incident_id']} is not in the store")
    keep = ("id", "opened_at", "updated_at", "status", "severity", "entities", "detections", "event_count",
            "signal_count")
    return {"incident": {k: row[k] for k in keep}}


def diagnose(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    events = deps.store.events(incident["id"])
    causes, run = _answer(deps, deps.reasoner.diagnose(events, deps.topology))
    reasons = [f"{c.entity}: {c.explanation}" for c in causes[:3]] or ["no candidate had evidence"]
    if run.fallback:
        reasons.insert(0, f"deterministic fallback: {run.fallback}")
    deps.audit.append(
        "causes.ranked", incident_id=incident["id"], node="diagnose",
        inputs={"events": len(events), "entities": incident["entities"], "topology": deps.topology.digest},
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
    actions = []
    for raw in state.get("proposals", []):
        proposal = Proposal.model_validate(raw)
        verdict = deps.guard.evaluate(
            proposal, topology=deps.topology, incident_entities=incident["entities"],
            incident_id=incident["id"], incident_severity=incident["severity"],
            at=parse_time(incident["updated_at"]))
        deps.audit.append(
            "action.verdict", incident_id=incident["id"], node="guard",
            inputs={"proposal": proposal.model_dump()},
            decision={"outcome": verdict.outcome, "rules": verdict.rules, "approver_role": verdict.approver_role},
            reasons=verdict.reasons, versions={**_versions(deps), "ruleset": verdict.ruleset,
                                               "contract": verdict.contract or ""})
        actions.append({"type": proposal.type, "target": proposal.target, "params": proposal.params,
                        "verdict": verdict.outcome, "rules": verdict.rules, "reason": verdict.reason,
                        "approver_role": verdict.approver_role, "proposed_by": proposal.proposed_by,
                        "executed": False})
    return {"actions": actions}


def close(state: IncidentState, runtime: Runtime[Deps]) -> IncidentState:
    deps = runtime.context
    incident = state["incident"]
    versions = _versions(deps)
    deps.store.save_diagnosis(incident["id"], status="diagnosed", root_causes=state.get("root_causes", []),
                              actions=state.get("actions", []), versions=versions)
    top = state.get("root_causes", [])[:1]
    deps.audit.append(
        "incident.diagnosed", incident_id=incident["id"], node="close",
        inputs={"event_count": incident["event_count"]},
        decision={"status": "diagnosed", "root_cause": top[0]["entity"] if top else None,
                  "actions": [(a["type"], a["target"], a["verdict"]) for a in state.get("actions", [])]},
        reasons=["dry run: actions are proposals with verdicts; nothing was executed"], versions=versions)
    return {"status": "diagnosed"}


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
                       ("guard", guard), ("close", close)):
        graph.add_node(name, node)
    graph.add_edge(START, "gather_context")
    graph.add_edge("gather_context", "diagnose")
    graph.add_edge("diagnose", "propose")
    graph.add_edge("propose", "guard")
    graph.add_edge("guard", "close")
    graph.add_edge("close", END)
    return graph


class IncidentGraph:
    """The compiled graph with its SQLite checkpointer; `run(incident_id)` drives one thread."""

    def __init__(self, checkpoint_path: str | Path, deps: Deps):
        self._conn = sqlite3.connect(str(checkpoint_path), check_same_thread=False)
        self.app = build_graph().compile(checkpointer=SqliteSaver(self._conn))
        self.deps = deps

    def run(self, incident_id: str) -> IncidentState:
        config = {"configurable": {"thread_id": incident_id}}
        return self.app.invoke({"incident_id": incident_id}, config, context=self.deps)

    def state(self, incident_id: str) -> IncidentState:
        return self.app.get_state({"configurable": {"thread_id": incident_id}}).values

    def close(self) -> None:
        self._conn.close()
