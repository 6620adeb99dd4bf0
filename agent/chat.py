"""Questions about incidents, answered without an LLM from the store and the audit log alone.

    reply = answer("why did you restart payments?", store, audit)          # an Answer, cited
    reply = answer("what changed?", store, audit, "inc-…", topology=topo)  # topology: optional

`visible` limits an answer to what one user may see: incidents it rejects are treated as absent, and so
are their decision records and events (records and events of no incident stay visible).

Each intent (`chat_intents`) is a keyword rule plus a lookup; entity and action names come from what the
store, the log and the topology hold (`chat_entities`), never from the question's wording alone. A
question that names an entity is answered from records about that entity or its instances only. An
answer cites the decision records (seq) and event ids it rests on; a question nothing grounds gets
"I don't know" and the list of what was searched. docs/chat.md lists the intents and the evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rules.topology import Topology

from .audit import AuditLog
from .chat_entities import Catalog, load_topology
from .models import DecisionRecord
from .store import IncidentStore

__all__ = ["Answer", "Context", "Scope", "Visible", "answer"]

Visible = Callable[[dict[str, Any]], bool]  # over a row of IncidentStore.incident(): may this user see it?

CLOSED = ("resolved", "escalated", "merged")
CHANGE_WINDOW_S = 3600.0  # how far before the first error a change still counts as "before"


@dataclass
class Answer:
    text: str
    citations: list[int | str] = field(default_factory=list)  # audit seqs (int) and event ids (str)
    searched: list[str] = field(default_factory=list)
    intent: str = "unknown"
    reasoner: str = "deterministic"  # or "llm" (agent.llm.LlmChat)
    versions: dict[str, str] = field(default_factory=dict)  # model and prompt version, for LLM answers
    fallback: str | None = None  # why the LLM did not answer, when it was asked and the deterministic path did
    empty: bool = False  # a grounded "nothing": the records were searched and none matches (not an unknown)

    @property
    def seqs(self) -> list[int]:
        return [c for c in self.citations if isinstance(c, int)]

    @property
    def event_ids(self) -> list[str]:
        return [c for c in self.citations if isinstance(c, str)]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "intent": self.intent, "citations": {"seqs": self.seqs, "events": self.event_ids},
                "searched": self.searched, "reasoner": self.reasoner, "versions": self.versions,
                "fallback": self.fallback, "empty": self.empty}


def answer(question: str, store: IncidentStore, audit: AuditLog, incident_id: str | None = None, *,
           visible: Visible | None = None, topology: Topology | None = None) -> Answer:
    """The deterministic answer; `topology` (else the file of the log's last `topology.loaded`, if it still
    exists) resolves services to their instances and bounds "what changed?" to the incident's neighbourhood."""
    from .chat_intents import INTENTS, NO_INTENT

    q = " ".join(question.lower().split())
    ctx = Context(q, Scope(store, audit, visible), incident_id, topology)
    if ctx.hidden:
        return ctx.unknown(f"incident {ctx.hidden!r} is not found or not visible to you")
    if ctx.named_incident and ctx.incident is None:
        return ctx.unknown("the incident the question names is not in the store")
    for intent, pattern, handler in INTENTS:
        if re.search(pattern, q):
            result = handler(ctx)
            result.intent = intent
            return result
    return ctx.unknown(NO_INTENT)


class Scope:
    """The store and the audit log as one user may see them. With `visible` None, everything is visible.

    An incident `visible` rejects reads as absent, whether asked for by id or listed; so do its decision
    records (`records`) and its events (`sees_event`). Records and events of no incident are visible;
    those of an incident the store does not hold are not, since nobody can say who may see them."""

    def __init__(self, store: IncidentStore, audit: AuditLog, visible: Visible | None = None):
        self.store, self.audit = store, audit
        self.scoped = visible is not None
        self._ids = None if visible is None else \
            {r["id"] for r in store.incidents(include_merged=True) if visible(r)}
        self.missing = "not found or not visible" if self.scoped else "not found"
        self.where = "you can see" if self.scoped else "in the store"

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        row = self.store.incident(incident_id)
        return row if row is not None and self.sees(row["id"]) else None

    def incidents(self, status: str | None = None, include_merged: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.store.incidents(status, include_merged) if self.sees(r["id"])]

    def records(self, incident_id: str | None = None, kind: str | None = None) -> list[DecisionRecord]:
        return [r for r in self.audit.records(incident_id=incident_id, kind=kind) if self.sees_event(r.incident_id)]

    def sees(self, incident_id: str) -> bool:
        return self._ids is None or incident_id in self._ids

    def sees_event(self, incident_id: str | None) -> bool:
        """For an event or a record: visible when it belongs to no incident or to a visible one."""
        return incident_id is None or self.sees(incident_id)


class Context:
    """One question being answered: what it names (incident, entities, strangers) and what was searched."""

    def __init__(self, q: str, scope: Scope, incident_id: str | None, topology: Topology | None = None):
        # store and audit log alike are read through the scope: only what the user may see
        self.q, self.store, self.audit = q, scope, scope
        self.searched: list[str] = []
        self.hidden: str | None = None  # an incident the user named that the scope does not show
        self.named_incident = bool(incident_id)
        self.incident = scope.incident(incident_id) if incident_id else None
        if incident_id and self.incident is None:
            self.searched.append(f"store: incident {incident_id!r} ({scope.missing})")
            self.hidden = incident_id if scope.scoped else None
        if self.incident is None and self.hidden is None:
            for token in re.findall(r"\binc-[0-9a-z]+\b", q):
                self.named_incident = True
                self.incident = scope.incident(token)
                self.searched.append(f"store: incident {token!r}" + ("" if self.incident else f" ({scope.missing})"))
                if self.incident:
                    self.hidden = None
                    break
                self.hidden = token if scope.scoped else None
        self.catalog = Catalog(_known_names(scope), topology or _logged_topology(scope))
        self.groups, self.strangers = self.catalog.resolve(re.sub(r"\binc-[0-9a-z]+\b", " ", q))

    @property
    def members(self) -> set[str]:
        """Every entity the question's named entities stand for (themselves and their instances)."""
        return {m for g in self.groups for m in g.members}

    def about(self, *targets: str | None) -> bool:
        """Does a record about these targets concern what the question names (anything, if it names none)?"""
        return not self.groups or any(t in self.members for t in targets if t)

    def named(self) -> str:
        return "; ".join(g.label() for g in self.groups) or "none"

    def records(self, kind: str) -> list[DecisionRecord]:
        scope = self.incident["id"] if self.incident else None
        self.searched.append(f"audit: {kind} records" + (f" of {scope}" if scope else ""))
        return self.store.records(incident_id=scope, kind=kind)

    def incidents(self) -> list[dict[str, Any]]:
        """The incident the question is about, else the visible incidents involving what it names (all of
        them if it names nothing), oldest first."""
        if self.incident is not None:
            return [self.incident]
        rows = self.store.incidents()
        if self.groups:
            rows = [r for r in rows if self.members & _involved(r)]
            self.searched.append(f"store: incidents involving {self.named()}")
            # "the cartservice incident" is the one whose ranked cause or action target it is, if any
            central = [r for r in rows if self.members & _central(r)]
            rows = central or rows
        return rows

    def latest_asked(self) -> bool:
        return bool(re.search(r"\b(last|latest|most recent|newest|current)\b", self.q))

    def unknown(self, why: str) -> Answer:
        searched = self.searched or ["nothing: no intent matched"]
        return Answer(f"I don't know: {why}. I searched: {'; '.join(searched)}.", [], searched)

    def stranger_unknown(self) -> Answer | None:
        if not self.strangers:
            return None
        self.searched.append(f"entities named: {', '.join(self.strangers)} (none is in the topology or the store)")
        return self.unknown(f"no incident {self.store.where} involves {', '.join(self.strangers)}")

    def nothing(self, text: str) -> Answer:
        return Answer(text, [], self.searched, empty=True)

    def done(self, text: str, citations: list[int | str]) -> Answer:
        return Answer(text, list(dict.fromkeys(citations)), self.searched)


def _involved(row: dict[str, Any]) -> set[str]:
    return {*row["entities"], *(a["target"] for a in row["actions"]), *(c["entity"] for c in row["root_causes"][:1])}


def _central(row: dict[str, Any]) -> set[str]:
    return {*(a["target"] for a in row["actions"]), *(c["entity"] for c in row["root_causes"][:1])}


def _known_names(scope: Scope) -> set[str]:
    names: set[str] = set()
    for row in scope.store.incidents(include_merged=True):
        names |= {*row["entities"], *(a["target"] for a in row["actions"]), *(c["entity"] for c in row["root_causes"])}
    return names


def _logged_topology(scope: Scope) -> Topology | None:
    loaded = scope.audit.records(kind="topology.loaded")
    return load_topology(loaded[-1].inputs.get("file")) if loaded else None


def proposal(record: DecisionRecord) -> dict[str, Any]:
    return record.inputs.get("proposal") or {}
