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
versions it used. Side effects happen only in `run_step` and `page_oncall`
(_steps.py), behind the ledger's idempotency key.
"""

from ._deps import Deps, IncidentState, Reasoner
from ._graph import IncidentGraph, build_graph
from ._nodes import approve, close, diagnose, escalate, execute, gather_context, guard, propose, verify
from ._steps import page_oncall

__all__ = ["Deps", "IncidentGraph", "IncidentState", "Reasoner", "approve", "build_graph", "close", "diagnose",
           "escalate", "execute", "gather_context", "guard", "page_oncall", "propose", "verify"]
