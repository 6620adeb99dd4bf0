"""What the chat's LLM is shown: records retrieved for one question, only those the user may see.

`retrieve` picks the incidents the question is about (those it names or the caller gives, else the ones
on entities it names, else the open and the most recent ones), then gathers their rows, decision
records and a few events (the evidence they cite, the first errors, changes just before) through a
`chat.Scope`, so nothing the user may not see is even read. `fit` ranks the records and events by
relevance to the question and keeps what fits the token budget; `prompt_vars` renders them with every
stored string scrubbed and quoted (`untrusted`), since records carry event text and earlier LLM output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.chat import CHANGE_WINDOW_S, CLOSED, Scope
from agent.models import DecisionRecord
from agent.report import duration

from ._client import estimate_tokens
from ..redact import scrub, scrub_attributes, untrusted, untrusted_word

MAX_INCIDENTS = 3
MAX_RECORDS = 200  # per incident, the most recent; older ones are not ranked at all
# Events per incident: those its records cite as evidence, its first errors or signals, and the latest
# changes in the hour before it or during it.
EVIDENCE_EVENTS, FIRST_EVENTS, CHANGE_EVENTS = 6, 3, 3
RECORD_CHARS = 600
EVENT_CHARS = 200
LINE_PREFIX_TOKENS = 25  # a line's seq or event id, time, kind and incident, before its text
KIND_WEIGHT = {"causes.ranked": 5, "action.verdict": 5, "action.executed": 5, "action.blocked": 5,
               "actions.proposed": 4, "incident.closed": 4, "approval.requested": 4, "approval.decided": 4,
               "action.approval": 4, "incident.opened": 3, "incident.diagnosed": 3, "incident.merged": 3,
               "reasoner.late": 2}
# Question wording that makes some kinds of records more relevant than their weight says.
HINTS = ((r"block|den(y|ied)|refus|rule|held|approv|guard", ("action.verdict", "action.blocked",
                                                              "approval.requested", "approval.decided")),
         (r"\bwhy\b|cause|diagnos", ("causes.ranked", "actions.proposed", "action.verdict")),
         (r"how long|mttr|resolv|recover|clos", ("incident.closed", "incident.opened")),
         (r"\bran\b|run|execut|restart|drain|failover|roll", ("action.executed", "action.verdict")),
         (r"chang|deploy|config", ("rtem.change",)))
STOPWORDS = {"the", "did", "does", "you", "what", "was", "were", "which", "how", "why", "and", "for", "with",
             "that", "this", "has", "have", "are", "its", "from", "before", "after", "still"}


@dataclass
class Retrieved:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    records: list[DecisionRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    missing: str | None = None  # an incident the question names that the user cannot see, or no such one
    left_out: int = 0

    @property
    def seqs(self) -> set[int]:
        return {r.seq for r in self.records}

    @property
    def event_ids(self) -> set[str]:
        return {e["id"] for e in self.events}

    @property
    def shown_event_ids(self) -> dict[str, str]:
        """Each event id as the prompt shows it (made safe), to the id itself."""
        return {untrusted_word(e["id"], 128): e["id"] for e in self.events}


def retrieve(question: str, scope: Scope, incident_id: str | None = None) -> Retrieved:
    q = question.lower()
    found = Retrieved()
    found.incidents, found.missing = _incidents(q, scope, incident_id, found.searched)
    for row in found.incidents:
        records = scope.records(incident_id=row["id"])[-MAX_RECORDS:]
        cited = [e for r in records for e in [*r.evidence, *_cause_evidence(r)]]
        events = _events(scope, row, list(dict.fromkeys(cited)))
        found.records += records
        known = found.event_ids
        found.events += [e for e in events if e["id"] not in known]
        found.searched.append(f"audit: {len(records)} decision records of {row['id']}; "
                              f"store: {len(events)} events of or just before {row['id']}")
    return found


def fit(found: Retrieved, question: str, budget_tokens: int) -> Retrieved:
    """The most relevant records and events whose lines fit `budget_tokens`, in seq and time order."""
    q = question.lower()
    words = {w for w in re.findall(r"[a-z0-9][a-z0-9_.-]{2,}", q) if w not in STOPWORDS}
    hinted = {kind for pattern, kinds in HINTS if re.search(pattern, q) for kind in kinds}
    lines = [(r, record_line(r), r.seq * 1e-9) for r in found.records] + [(e, event_line(e), -1) for e in found.events]
    ranked = sorted(lines, key=lambda i: -(_score(_kind(i[0]), i[1], words, hinted) + i[2]))
    kept, used = [], 0
    for item, line, _ in ranked:
        tokens = estimate_tokens(line) + LINE_PREFIX_TOKENS
        if used + tokens <= budget_tokens:
            kept.append(item)
            used += tokens
    records = sorted((i for i in kept if isinstance(i, DecisionRecord)), key=lambda r: r.seq)
    events = sorted((i for i in kept if isinstance(i, dict)), key=lambda e: (e["ts"], e["id"]))
    return Retrieved(incidents=found.incidents, records=records, events=events, searched=found.searched,
                     missing=found.missing, left_out=len(lines) - len(kept))


def prompt_vars(question: str, found: Retrieved) -> dict[str, Any]:
    return {"question": scrub(" ".join(question.split()))[:1000], "left_out": found.left_out,
            "incidents": [_incident(r) for r in found.incidents],
            "records": [{"seq": r.seq, "at": r.at.isoformat(timespec="seconds"), "kind": untrusted_word(r.kind),
                         "incident": untrusted_word(r.incident_id or "no incident"), "text": record_line(r)}
                        for r in found.records],
            "events": [{"id": untrusted_word(e["id"], 128), "time": untrusted_word(e["time"]),
                        "type": untrusted_word(e["type"]), "subject": untrusted_word(e["subject"]),
                        "severity": untrusted_word(e["severity"]),
                        "incident": untrusted_word(e["incident_id"] or "no incident"), "text": event_line(e)}
                       for e in found.events]}


def record_line(record: DecisionRecord) -> str:
    """A decision record in one quoted line: what it decided, on which action, why, on what evidence."""
    decision = {k: v for k, v in record.decision.items() if k != "reasoner"}
    reasoner = record.decision.get("reasoner")
    if isinstance(reasoner, dict):  # who decided matters; its call notes do not
        decision["decided_by"] = reasoner.get("reasoner")
        if reasoner.get("fallback"):
            decision["fallback"] = reasoner["fallback"]
    inputs = {k: record.inputs[k] for k in ("proposal", "action", "idempotency_key", "token", "role")
              if k in record.inputs}
    parts = [_flat(inputs)] if inputs else []
    parts.append(_flat(decision))
    if record.reasons:
        parts.append("reasons: " + "; ".join(record.reasons))
    if record.evidence:
        parts.append("evidence: " + ", ".join(record.evidence[:6]))
    return untrusted(" | ".join(parts), RECORD_CHARS)


def event_line(event: dict[str, Any]) -> str:
    attributes = scrub_attributes(json.loads(event["attributes"] or "{}"))
    text = event["message"] or ""
    if attributes:
        text += " " + json.dumps(attributes, sort_keys=True)
    return untrusted(text.strip() or "-", EVENT_CHARS)


# -- helpers ---------------------------------------------------------------------------------------


def _incidents(q: str, scope: Scope, incident_id: str | None,
               searched: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    named = [incident_id] if incident_id else list(dict.fromkeys(re.findall(r"\binc-[0-9a-z]+\b", q)))
    if named:
        rows = []
        for name in named[:MAX_INCIDENTS]:
            row = scope.incident(name)
            searched.append(f"store: incident {name!r}" + ("" if row else f" ({scope.missing})"))
            if row is None:
                return [], name
            rows.append(row)
        return rows, None
    rows = scope.incidents()[::-1]  # most recent first
    known = {e for r in rows for e in [*r["entities"], *(a["target"] for a in r["actions"])]}
    entities = sorted(e for e in known if re.search(rf"(?<![\w-]){re.escape(e.lower())}(?![\w-])", q))
    on = [r for r in rows if set(entities) & {*r["entities"], *(a["target"] for a in r["actions"])}]
    if on:
        searched.append(f"store: incidents on {', '.join(entities)}")
        return on[:MAX_INCIDENTS], None
    searched.append("store: open incidents, then the most recent ones")
    picked = [r for r in rows if r["status"] not in CLOSED] + rows
    return list({r["id"]: r for r in picked}.values())[:MAX_INCIDENTS], None


def _events(scope: Scope, row: dict[str, Any], cited: list[str]) -> list[dict[str, Any]]:
    store = scope.store
    rows = store.events_by_id(cited[:EVIDENCE_EVENTS])
    rows += store.error_events(row["id"], FIRST_EVENTS)
    rows += store.change_events((row["first_ts"] or 0) - CHANGE_WINDOW_S, row["last_ts"] or 0)[::-1][:CHANGE_EVENTS]
    seen = {e["id"]: e for e in rows if scope.sees_event(e["incident_id"])}
    return list(seen.values())


def _flat(value: Any, items: int = 8) -> str:
    """A record's structured fields as short plain text: empty fields dropped, long lists cut."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flat(v)}" for k, v in value.items() if v not in (None, "", [], {})) + "}"
    if isinstance(value, (list, tuple)):
        more = f", and {len(value) - items} more" if len(value) > items else ""
        return "[" + ", ".join(_flat(v) for v in value[:items]) + more + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _kind(item: DecisionRecord | dict[str, Any]) -> str:
    return item.kind if isinstance(item, DecisionRecord) else item["type"]


def _cause_evidence(record: DecisionRecord) -> list[str]:
    causes = record.decision.get("root_causes") if record.kind == "causes.ranked" else None
    return [e for c in (causes or [])[:2] if isinstance(c, dict) for e in c.get("evidence", [])[:3]]


def _score(kind: str, line: str, words: set[str], hinted: set[str]) -> float:
    weight = KIND_WEIGHT.get(kind, 1) + (4 if any(kind.startswith(h) for h in hinted) else 0)
    return weight + 2 * sum(1 for w in words if w in line.lower())


def _incident(row: dict[str, Any]) -> dict[str, Any]:
    entities = [untrusted_word(e) for e in row["entities"][:12]]
    more = len(row["entities"]) - len(entities)
    causes = [f"{untrusted_word(c.get('entity'))} ({untrusted_word(c.get('fault_type'))}, confidence "
              f"{float(c.get('confidence') or 0):.2f})" for c in row["root_causes"][:3]]
    actions = [f"#{a.get('index')} {untrusted_word(a.get('type'))} on {untrusted_word(a.get('target'))}: verdict "
               f"{untrusted_word(a.get('verdict'))}, {untrusted_word(a.get('status'))}" for a in row["actions"][:6]]
    return {"id": untrusted_word(row["id"]), "status": untrusted_word(row["status"]),
            "severity": untrusted_word(row["severity"]), "opened_at": untrusted_word(row["opened_at"]),
            "entities": ", ".join(entities) + (f" and {more} more" if more > 0 else ""),
            "causes": "; ".join(causes) or "not diagnosed yet", "actions": "; ".join(actions) or "none",
            "mttr": duration(row["mttr_s"]) if row.get("mttr_s") is not None else "none (recovery not verified)",
            "resolution": untrusted(row["resolution"], 200) if row.get("resolution") else ""}
