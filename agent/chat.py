"""Questions about incidents, answered without an LLM from the store and the audit log alone.

`visible` limits an answer to what one user may see: incidents it rejects are treated as absent, and so
are their decision records and events (records and events of no incident stay visible).

Each intent is a keyword rule plus a lookup; entity and action names come from what the store and the
log hold, never from the question's wording alone. An answer cites the decision records (seq) and event
ids it rests on; a question nothing grounds gets "I don't know" and the list of what was searched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .incident import CONFIRMED, confirmed_cause
from .models import DecisionRecord
from .report import duration
from .store import IncidentStore

__all__ = ["Answer", "Scope", "Visible", "answer"]

Visible = Callable[[dict[str, Any]], bool]  # over a row of IncidentStore.incident(): may this user see it?

GENERIC = {"action", "actions", "anything", "it", "that", "this", "remediation", "me", "us", "execution"}
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

    @property
    def seqs(self) -> list[int]:
        return [c for c in self.citations if isinstance(c, int)]

    @property
    def event_ids(self) -> list[str]:
        return [c for c in self.citations if isinstance(c, str)]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "intent": self.intent, "citations": {"seqs": self.seqs, "events": self.event_ids},
                "searched": self.searched, "reasoner": self.reasoner, "versions": self.versions,
                "fallback": self.fallback}


def answer(question: str, store: IncidentStore, audit: AuditLog, incident_id: str | None = None, *,
           visible: Visible | None = None) -> Answer:
    q = question.lower().strip()
    ctx = _Context(q, Scope(store, audit, visible), incident_id)
    if ctx.hidden:
        return ctx.unknown(f"incident {ctx.hidden!r} is not found or not visible to you")
    for intent, pattern, handler in INTENTS:
        if re.search(pattern, q):
            result = handler(ctx)
            result.intent = intent
            return result
    return ctx.unknown("the question matches none of the questions I can answer without an LLM "
                       "(why an action ran, what changed, which rule blocked an action, what is open, how long "
                       "an incident took)")


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


class _Context:
    def __init__(self, q: str, scope: Scope, incident_id: str | None):
        # store and audit log alike are read through the scope: only what the user may see
        self.q, self.store, self.audit = q, scope, scope
        self.searched: list[str] = []
        self.hidden: str | None = None  # an incident the user named that the scope does not show
        self.incident = scope.incident(incident_id) if incident_id else None
        if incident_id and self.incident is None:
            self.searched.append(f"store: incident {incident_id!r} ({scope.missing})")
            self.hidden = incident_id if scope.scoped else None
        if self.incident is None and self.hidden is None:
            for token in re.findall(r"\binc-[0-9a-z]+\b", q):
                self.incident = scope.incident(token)
                self.searched.append(f"store: incident {token!r}" + ("" if self.incident else f" ({scope.missing})"))
                if self.incident:
                    self.hidden = None
                    break
                self.hidden = token if scope.scoped else None

    def records(self, kind: str) -> list[DecisionRecord]:
        scope = self.incident["id"] if self.incident else None
        self.searched.append(f"audit: {kind} records" + (f" of {scope}" if scope else ""))
        return self.store.records(incident_id=scope, kind=kind)

    def entities(self) -> list[str]:
        """Entity names the store knows that the question mentions, longest first."""
        known: set[str] = set()
        for row in self.store.incidents(include_merged=True):
            known.update(row["entities"])
            known.update(a["target"] for a in row["actions"])
        return sorted((e for e in known if re.search(rf"(?<![\w-]){re.escape(e.lower())}(?![\w-])", self.q)),
                      key=lambda e: (-len(e), e))

    def strangers(self) -> list[str]:
        """Names in the question that look like entities (`paymentservice-9`) but that the store never saw."""
        known = {e.lower() for e in self.entities()}
        return [w for w in re.findall(r"[a-z][a-z0-9_.]*-[a-z0-9-]*[a-z0-9]", self.q)
                if w not in known and not w.startswith("inc-")]

    def action_types(self, records: list[DecisionRecord]) -> list[str]:
        """Action types in `records` that the question names (`restart` names restart_instance)."""
        words = re.findall(r"[a-z_]+", self.q)
        types = sorted({_proposal(r).get("type") or "" for r in records} - {""})
        return [t for t in types if t in self.q or any(w.startswith(t.split("_")[0]) and len(t.split("_")[0]) >= 4
                                                       for w in words)]

    def unknown(self, why: str) -> Answer:
        searched = self.searched or ["nothing: no intent matched"]
        return Answer(f"I don't know: {why}. I searched: {'; '.join(searched)}.", [], searched)

    def done(self, text: str, citations: list[int | str]) -> Answer:
        return Answer(text, list(dict.fromkeys(citations)), self.searched)


# -- intents ----------------------------------------------------------------------------------------------

def _why(ctx: _Context) -> Answer:
    verdicts = ctx.records("action.verdict")
    executed = ctx.records("action.executed")
    entities = ctx.entities()
    types = ctx.action_types(verdicts)
    ctx.searched.append(f"entities named: {', '.join(entities) or 'none'}; actions named: {', '.join(types) or 'none'}")
    if ctx.strangers():
        return ctx.unknown(f"no incident {ctx.store.where} involves {', '.join(ctx.strangers())}")
    matches = [v for v in verdicts if (not entities or _proposal(v).get("target") in entities)
               and (not types or _proposal(v).get("type") in types)]
    if not matches or not (entities or types):
        return ctx.unknown("no recorded action matches the action and target in the question")
    lines, cites = [], []
    for verdict in matches[-3:]:
        p = _proposal(verdict)
        label_re = re.compile(rf"#\d+ {re.escape(p['type'])} on {re.escape(p['target'])}$")
        ran = [x for x in executed if x.incident_id == verdict.incident_id and label_re.match(x.inputs.get("action", ""))]
        causes = ctx.audit.records(incident_id=verdict.incident_id, kind="causes.ranked")
        proposed = ctx.audit.records(incident_id=verdict.incident_id, kind="actions.proposed")
        top = (causes[-1].decision.get("root_causes") or [{}])[0] if causes else {}
        reason = next((pp.get("reason") for pp in (proposed[-1].decision.get("proposals", []) if proposed else [])
                       if pp.get("type") == p["type"] and pp.get("target") == p["target"]), "")
        text = f"In {verdict.incident_id}, {p['type']} on {p['target']} was proposed"
        if top:
            text += (f" because the diagnosis ranked {top.get('entity')} first ({top.get('fault_type')}, confidence "
                     f"{float(top.get('confidence', 0)):.2f}; seq {causes[-1].seq})")
            cites += [causes[-1].seq, *top.get("evidence", [])[:5]]
        if reason:
            text += f": {reason}"
        if proposed:
            text += f" (seq {proposed[-1].seq})"
            cites.append(proposed[-1].seq)
        rules = ", ".join(verdict.decision.get("rules", []))
        text += f". The guard said {verdict.decision.get('outcome')} by {rules or 'no guardrail matching'} (seq {verdict.seq})"
        cites.append(verdict.seq)
        if ran:
            x = ran[-1]
            text += (f"; it ran {'successfully' if x.decision.get('ok') else 'and FAILED'} with idempotency key "
                     f"{x.inputs.get('idempotency_key')} (seq {x.seq}).")
            cites.append(x.seq)
        else:
            text += "; it was not executed."
        lines.append(text)
    return ctx.done("\n".join(lines), cites)


def _changed(ctx: _Context) -> Answer:
    incidents = [ctx.incident] if ctx.incident else ctx.store.incidents()
    named = ctx.entities()
    if not ctx.incident and named:
        incidents = [r for r in incidents if set(named) & set(r["entities"])] or incidents
    if not incidents:
        ctx.searched.append("store: incidents (none)")
        return ctx.unknown("there is no incident to look before")
    row = incidents[-1]
    first = ctx.store.store.first_error(row["id"])
    if first is None:
        ctx.searched.append(f"store: events of {row['id']} (none)")
        return ctx.unknown(f"{row['id']} has no recorded events")
    first_id, first_ts, first_time = first["id"], first["ts"], first["time"]
    ctx.searched.append(f"store: rtem.change.* events in the {duration(CHANGE_WINDOW_S)} before {first_time} "
                        f"(first error of {row['id']}, event {first_id})")
    changes = [(c["id"], c["time"], c["type"], c["subject"], c["message"])
               for c in ctx.store.store.change_events(first_ts - CHANGE_WINDOW_S, first_ts)
               if ctx.store.sees_event(c["incident_id"])]
    opened = ctx.audit.records(incident_id=row["id"], kind="incident.opened")
    if not changes:
        return ctx.done(f"Nothing: no change (deploy or config) was recorded in the {duration(CHANGE_WINDOW_S)} "
                        f"before {row['id']}'s first error at {first_time} (event {first_id}).",
                        [*(r.seq for r in opened[:1]), first_id])
    entities = set(row["entities"])
    lines = [f"Before {row['id']}'s first error at {first_time} (event {first_id}):"]
    for event_id, time, type_, subject, message in changes:
        mark = " (an entity of the incident)" if subject in entities else ""
        lines.append(f"- {time} {type_} on {subject}{mark}: {message or '-'} (event {event_id})")
    return ctx.done("\n".join(lines), [*(r.seq for r in opened[:1]), first_id, *(c[0] for c in changes)])


def _blocked(ctx: _Context) -> Answer:
    verdicts = ctx.records("action.verdict")
    blocked = ctx.records("action.blocked")
    types = ctx.action_types(verdicts)
    entities = ctx.entities()
    ctx.searched.append(f"actions named: {', '.join(types) or 'none'}; entities named: {', '.join(entities) or 'none'}")
    if ctx.strangers():
        return ctx.unknown(f"no incident {ctx.store.where} involves {', '.join(ctx.strangers())}")
    named = re.search(r"\b(?:block(?:ed|s)?|den(?:y|ied)|refused?|stopp?(?:ed)?|prevent(?:ed)?|held)\s+(?:the\s+|a\s+)?([a-z][\w-]*)", ctx.q)
    if named and not types and not entities and named.group(1) not in GENERIC:
        return ctx.unknown(f"no recorded action is called {named.group(1)!r}")
    held = [v for v in verdicts if v.decision.get("outcome") in ("deny", "require_approval")
            and (not types or _proposal(v).get("type") in types)
            and (not entities or _proposal(v).get("target") in entities)]
    late = [b for b in blocked if (not types or any(t in b.inputs.get("action", "") for t in types))]
    if not held and not late:
        what = ", ".join(types) or "any action"
        return ctx.unknown(f"no verdict denied or held {what} for approval")
    lines, cites = [], []
    for v in held:
        p = _proposal(v)
        kind = "denied" if v.decision["outcome"] == "deny" else "held for approval"
        lines.append(f"{p['type']} on {p['target']} ({v.incident_id}) was {kind} by "
                     f"{', '.join(v.decision.get('rules', [])) or 'no named rule'}: {'; '.join(v.reasons)} (seq {v.seq})")
        cites.append(v.seq)
    for b in late:
        lines.append(f"{b.inputs.get('action')} ({b.incident_id}) was blocked before running: "
                     f"{'; '.join(b.reasons)} (seq {b.seq})")
        cites.append(b.seq)
    return ctx.done("\n".join(lines), cites)


def _open(ctx: _Context) -> Answer:
    rows = [r for r in ctx.store.incidents() if r["status"] not in CLOSED]
    ctx.searched.append("store: incidents not resolved, escalated or merged")
    if not rows:
        return ctx.done("Nothing is open: every incident is resolved, escalated or merged.", [])
    lines, cites = [f"{len(rows)} incident(s) still open:"], []
    for row in rows:
        opened = ctx.audit.records(incident_id=row["id"], kind="incident.opened")
        last = ctx.audit.records(incident_id=row["id"])
        waiting = [a for a in row["actions"] if a.get("status") == "awaiting_approval"]
        top = row["root_causes"][0]["entity"] if row["root_causes"] else "not diagnosed yet"
        line = f"- {row['id']}: {row['status']}, opened {row['opened_at']}, root cause {top}"
        if waiting:
            line += "; awaiting approval: " + ", ".join(f"#{a['index']} {a['type']} on {a['target']}" for a in waiting)
        if last:
            line += f" (last record seq {last[-1].seq} {last[-1].kind})"
            cites.append(last[-1].seq)
        cites += [r.seq for r in opened[:1]]
        lines.append(line)
    return ctx.done("\n".join(lines), cites)


def _mttr(ctx: _Context) -> Answer:
    if ctx.incident is None:
        named = ctx.entities()
        rows = [r for r in ctx.store.incidents() if set(named) & set(r["entities"])] if named else []
        ctx.searched.append(f"store: incidents on {', '.join(named) or 'no named entity'}")
        if len(rows) != 1:
            return ctx.unknown("the question names no incident I can find (give its id, e.g. `--incident ID`)")
        ctx.incident = rows[0]
    row = ctx.incident
    closing = ctx.records("incident.closed")
    opened = ctx.audit.records(incident_id=row["id"], kind="incident.opened")
    cites = [*(r.seq for r in opened[:1]), *(r.seq for r in closing[-1:])]
    if row.get("mttr_s") is None:
        return ctx.done(f"{row['id']} has no MTTR: it is {row['status']}"
                        + (f" ({row['resolution']})" if row.get("resolution") else "")
                        + "; MTTR is measured only when verification sees recovery.", cites)
    return ctx.done(f"{row['id']} took {duration(row['mttr_s'])} ({row['mttr_s']:.1f} s of event time) from opening "
                    f"at {row['opened_at']} to verified recovery; {row.get('resolution') or ''}".rstrip("; ")
                    + (f" (seq {closing[-1].seq})." if closing else "."), cites)


def _cause(ctx: _Context) -> Answer:
    """rtem's ranking and, beside it, the cause a person confirmed (the latest `cause.confirmed`)."""
    if ctx.incident is None:
        named = ctx.entities()
        rows = [r for r in ctx.store.incidents() if not named or set(named) & set(r["entities"])]
        ctx.searched.append(f"store: incidents{' on ' + ', '.join(named) if named else ''} (the latest)")
        if not rows:
            return ctx.unknown("there is no incident whose cause I could name")
        ctx.incident = rows[-1]
    row, ranked = ctx.incident, ctx.records("causes.ranked")
    confirmed = confirmed_cause(ctx.records(CONFIRMED))
    causes = ranked[-1].decision.get("root_causes", []) if ranked else []
    if causes:
        top = ", then ".join(f"{c.get('entity')} ({c.get('fault_type')}, {float(c.get('confidence', 0)):.2f})"
                             for c in causes[:3])
        text = f"For {row['id']}, rtem ranked {top} (seq {ranked[-1].seq})."
    else:
        text = f"rtem ranked no root cause for {row['id']}."
    if confirmed is None:
        text += f" Nobody has confirmed the cause yet (rtem incidents confirm {row['id']} --cause ENTITY)."
    else:
        text += (f" The confirmed cause is {confirmed.describe()} (seq {confirmed.seq})"
                 + (f": {confirmed.note}." if confirmed.note else "."))
    cites = [r.seq for r in ranked[-1:]] + [*(causes[0].get("evidence", [])[:5] if causes else [])]
    return ctx.done(text, cites + ([confirmed.seq] if confirmed else []))


INTENTS: list[tuple[str, str, Callable[[_Context], Answer]]] = [
    ("mttr", r"how long|\bmttr\b|time to (resolve|recover)", _mttr),
    ("blocked", r"\b(block(ed|s)?|den(y|ied)|refus(e|ed)|prevent(ed)?|stopp?(ed)?|held)\b", _blocked),
    ("changed", r"\bchang(e|ed|es)\b|\bdeploy(ed|s|ment)?\b", _changed),
    ("why", r"\bwhy\b", _why),
    ("open", r"\b(still )?open\b|unresolved|outstanding|pending", _open),
    ("cause", r"\broot[- ]?causes?\b|\bconfirmed\b|\bcaused?\b|\bculprit\b", _cause),
]


def _proposal(record: DecisionRecord) -> dict[str, Any]:
    return record.inputs.get("proposal") or {}
