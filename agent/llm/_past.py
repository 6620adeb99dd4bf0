"""Similar past incidents for the LLM: what rtem ranked, what a person confirmed, and what happened.

`similar_past` picks the earlier incidents that share the most entities (or their services) with the
current one and tells, for each, what was known **when the current incident opened**, never later:
rtem's top-ranked cause, the confirmed cause (agent/confirm.py) and whether rtem agreed, the status it had
reached (resolved, escalated, failed, diagnosed, or still open), approvals rejected or expired, and which
executed action preceded recovery. All of it is read from the audit log, the one record of when each
thing became known, and cut at the current incident's `incident.opened` record: only records before it in
the chain count (seq order, so clocks cannot disagree). An incident with no such record (opened before the
audit log kept them) is cut by time instead: records made at or before its first event.

`past_incident` is the pure part (records in, a `PastIncident` out); `similar_past` is the edge that
reads the store and the audit log. Without an audit log nothing can be dated, so no past incident is given
(the model would be shown what may have been learned later).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.incident import ConfirmedCause, confirmed_cause

from ..redact import untrusted, untrusted_word

SIMILARITY_MIN = 0.2  # Jaccard overlap (entities and their services) for a past incident to count as similar
MAX_PAST = 3  # the most the most detailed context level shows; `LEVELS` trims from the end of the list
EXAMINED = 20  # similar rows read from the audit log at most: the context must stay cheap to build
PAGE = "notify_oncall"  # a page tells people; it never fixes anything, so it is never "what fixed it"
FINAL_KINDS = {"incident.closed", "incident.diagnosed", "incident.failed", "incident.resolved", "incident.reopened"}


@dataclass(frozen=True)
class Cutoff:
    """What counts as known when the current incident opened: records before `seq` in the chain, or
    (no `incident.opened` record) made at or before `at`."""

    seq: int | None
    at: datetime

    def known(self, record: Any) -> bool:
        return record.seq < self.seq if self.seq is not None else record.at <= self.at


@dataclass(frozen=True)
class PastIncident:
    """One earlier incident as it stood when the current one opened."""

    id: str
    opened_at: str
    similarity: float
    ranked: str | None = None  # rtem's top-ranked cause
    ranked_fault: str | None = None
    confirmed: ConfirmedCause | None = None
    status: str = "open"  # resolved | escalated | failed | diagnosed | open (as of the cutoff)
    resolution: str = ""
    fixed_by: str | None = None  # the last successful action (not a page) before it resolved
    executed: list[str] = field(default_factory=list)  # "restart_service on cartservice-0 (ok|failed)"
    rejected: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # approvals that expired, or approved ones blocked later

    def prompt_vars(self) -> dict[str, Any]:
        """The template's view: identifiers bare but scrubbed, free text quoted like event text."""
        confirmed = self.confirmed
        return {
            "id": untrusted_word(self.id), "opened_at": self.opened_at, "similarity": f"{self.similarity:.2f}",
            "ranked": untrusted_word(self.ranked) if self.ranked else "none",
            "ranked_fault": untrusted_word(self.ranked_fault or "unknown", 40),
            "confirmed": None if confirmed is None else {
                "entity": untrusted_word(confirmed.entity),
                "fault_type": untrusted_word(confirmed.fault_type, 40) if confirmed.fault_type else "",
                "agreed": confirmed.agreed, "rank": confirmed.rank,
                "note": untrusted(confirmed.note, 160) if confirmed.note else ""},
            "status": untrusted_word(self.status, 20), "resolution": untrusted(self.resolution, 160) if self.resolution else "",
            "fixed_by": _words(self.fixed_by) if self.fixed_by else "",
            "executed": ", ".join(_words(a) for a in self.executed[:4]) or "none",
            "rejected": ", ".join(_words(a) for a in self.rejected[:4]),
            "expired": ", ".join(_words(a) for a in self.expired[:4]),
        }


def past_incident(row: dict[str, Any], records: Iterable[Any], cutoff: Cutoff,
                  similarity: float) -> PastIncident | None:
    """The incident `row` as its audit records (any order) stood at `cutoff`; None when by then it had
    neither a ranking nor a confirmed cause (nothing the model could learn from). Pure."""
    known = sorted((r for r in records if cutoff.known(r)), key=lambda r: r.seq)
    ranking = [r for r in known if r.kind == "causes.ranked"]
    confirmed = confirmed_cause(known)
    if not ranking and confirmed is None:
        return None
    top = (ranking[-1].decision.get("root_causes") or [{}])[0] if ranking else {}
    status, resolution, resolved_seq = "open", "", None
    executed, rejected, expired, fixes = [], [], [], []
    for record in known:
        if record.kind in FINAL_KINDS:
            status, resolution = _status(record)
            resolved_seq = record.seq if status == "resolved" else None
        elif record.kind == "action.executed":
            action = _action(record.inputs.get("action"))
            ok = bool(record.decision.get("ok"))
            executed.append(f"{action} ({'ok' if ok else 'failed'})")
            if ok and not action.startswith(PAGE + " "):
                fixes.append((record.seq, action))
        elif record.kind in ("action.approval", "action.blocked"):
            outcome = record.decision.get("status")
            action = _action(record.inputs.get("action"))
            if outcome == "rejected":
                rejected.append(f"{action} by {record.decision.get('by') or 'a person'}")
            elif outcome in ("expired", "blocked"):
                expired.append(f"{action} ({outcome})")
    before = [action for seq, action in fixes if resolved_seq is not None and seq < resolved_seq]
    return PastIncident(id=row["id"], opened_at=str(row.get("opened_at") or ""), similarity=round(similarity, 2),
                        ranked=top.get("entity"), ranked_fault=top.get("fault_type"), confirmed=confirmed,
                        status=status, resolution=resolution, fixed_by=before[-1] if before else None,
                        executed=executed, rejected=rejected, expired=expired)


def similarity(mine: Iterable[str], theirs: Iterable[str], service_of: Callable[[str], str]) -> float:
    """Jaccard overlap of two incidents' entities together with their services, so two incidents on
    different instances of one service still count as alike."""
    a = {name for e in mine for name in (e, service_of(e))}
    b = {name for e in theirs for name in (e, service_of(e))}
    return len(a & b) / len(a | b) if a and b else 0.0


def similar_past(store, audit, incident_id: str, entities: Sequence[str], first_ts: float,
                 service_of: Callable[[str], str], limit: int = MAX_PAST) -> list[PastIncident]:
    """Up to `limit` earlier incidents most like this one, most similar first (newest first among
    equals), each as it stood when this one opened. `first_ts` is this incident's first event time."""
    if store is None or audit is None or not entities:
        return []
    scored = []
    for row in store.incidents():
        if row["id"] == incident_id:
            continue
        score = similarity(entities, row["entities"], service_of)
        if score >= SIMILARITY_MIN:
            scored.append((score, row))
    scored.sort(key=lambda item: (item[1]["first_ts"], item[1]["id"]), reverse=True)
    scored.sort(key=lambda item: -item[0])  # stable: newest first among equals
    cutoff = _cutoff(audit, incident_id, first_ts)
    past: list[PastIncident] = []
    for score, row in scored[:EXAMINED]:
        records = audit.records(incident_id=row["id"])
        opened = next((r for r in records if r.kind == "incident.opened"), None)
        if opened is not None and not cutoff.known(opened):
            continue  # opened after this one: not earlier, whatever its event time says
        if opened is None and row["first_ts"] >= first_ts:
            continue
        found = past_incident(row, records, cutoff, score)
        if found is not None:
            past.append(found)
            if len(past) == limit:
                break
    return past


# -- helpers ---------------------------------------------------------------------------------------


def _cutoff(audit, incident_id: str, first_ts: float) -> Cutoff:
    opened = audit.records(incident_id=incident_id, kind="incident.opened", limit=1)
    at = datetime.fromtimestamp(first_ts, timezone.utc)
    return Cutoff(seq=opened[0].seq, at=opened[0].at) if opened else Cutoff(seq=None, at=at)


def _status(record: Any) -> tuple[str, str]:
    if record.kind == "incident.failed":
        return "failed", "; ".join(record.reasons)[:200]
    if record.kind == "incident.resolved":
        return "resolved", "resolved by a person: " + "; ".join(record.reasons)[:200]
    if record.kind == "incident.reopened":
        return "open", "reopened by a person"
    return str(record.decision.get("status") or "diagnosed"), "; ".join(record.reasons)[:200]


def _words(text: str, limit: int = 120) -> str:
    """An action label (type, target, a few plain words) with each word made safe like an identifier."""
    return " ".join(untrusted_word(word) for word in text.split())[:limit]


def _action(label: Any) -> str:
    """'#2 restart_service on cartservice-0' → 'restart_service on cartservice-0'."""
    text = str(label or "?")
    return text.split(" ", 1)[1] if text.startswith("#") and " " in text else text
