"""What people do with an incident while they are on call, and whom to page when: pure, clock passed in.

A person acknowledges, assigns, comments on, resolves (with a reason) or reopens an incident; each
transition is checked here and refused with a typed reason (`OnCallRefused`), like `check_decision`
for approvals. The on-call state is not stored on its own: `oncall_state` folds the incident's
decision records (`incident.acknowledged`, `incident.paged`, …) into it, so the audit log is the one
truth and a restart knows exactly who acknowledged and which pages went out.

`due_pages` reads an escalation policy (rules/_escalation.py) and that state: the first page, a page
again every `repeat_every` while nobody acknowledged, the next level after `escalate_after`, nothing
during quiet hours below their severity, nothing once acknowledged or closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from rules import EscalationPolicy

from ._model import FINAL, Incident, IncidentStatus
from ._plan import stand_down

KINDS = ("incident.acknowledged", "incident.assigned", "incident.commented", "incident.resolved",
         "incident.reopened", "incident.paged")


class OnCallRefusal(StrEnum):
    NO_SUCH_INCIDENT = "no_such_incident"
    CLOSED = "closed"  # resolved, escalated, … : reopen it first
    NOT_CLOSED = "not_closed"  # reopen of an open incident
    MERGED = "merged"  # it lives on in the incident that absorbed it
    ALREADY_ACKNOWLEDGED = "already_acknowledged"
    ALREADY_ASSIGNED = "already_assigned"
    MISSING_TEXT = "missing_text"  # a comment, or the reason of a resolve or reopen
    CHANGED = "changed"  # the incident moved on between reading and writing: try again

    @property
    def http_status(self) -> int:
        return {OnCallRefusal.NO_SUCH_INCIDENT: 404, OnCallRefusal.MISSING_TEXT: 422}.get(self, 409)


class OnCallRefused(Exception):
    """An on-call action that was not kept, and why; `kind` tells the surface how to answer."""

    def __init__(self, kind: OnCallRefusal, message: str, detail: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail or {}


@dataclass(frozen=True)
class Comment:
    by: str
    at: datetime
    text: str


@dataclass(frozen=True)
class PageSent:
    """One page that went out (or was attempted): which level, which repeat of it, to whom, when."""

    level: int
    repeat: int
    at: datetime
    receivers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OnCallState:
    """Who holds the incident and what was paged, in its current round (a reopen starts a new one)."""

    round: int = 0
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    assignee: str | None = None
    comments: tuple[Comment, ...] = ()
    pages: tuple[PageSent, ...] = ()  # this round's, oldest first
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    reason: str | None = None  # of the last resolve or reopen

    def to_dict(self) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            return at.isoformat() if at else None
        return {"round": self.round, "acknowledged_by": self.acknowledged_by,
                "acknowledged_at": iso(self.acknowledged_at), "assignee": self.assignee,
                "resolved_by": self.resolved_by, "resolved_at": iso(self.resolved_at), "reason": self.reason,
                "comments": [{"by": c.by, "at": iso(c.at), "text": c.text} for c in self.comments],
                "pages": [{"level": p.level, "repeat": p.repeat, "at": iso(p.at), "receivers": list(p.receivers)}
                          for p in self.pages]}


class Record(Protocol):
    """What the fold reads of a decision record (agent.audit.DecisionRecord has it)."""

    kind: str
    at: datetime
    inputs: Any
    decision: Any


def oncall_state(records: Iterable[Record]) -> OnCallState:
    """The on-call state from an incident's decision records, in log order. Pages recorded without a
    level (the graph's own `page_oncall`) are not the escalation policy's and do not count here."""
    state = OnCallState()
    for record in records:
        inputs = record.inputs if isinstance(record.inputs, dict) else {}
        by = inputs.get("by")
        if record.kind == "incident.acknowledged":
            state = replace(state, acknowledged_by=by, acknowledged_at=record.at)
        elif record.kind == "incident.assigned":
            state = replace(state, assignee=inputs.get("to"))
        elif record.kind == "incident.commented":
            state = replace(state, comments=state.comments + (Comment(by or "", record.at, inputs.get("text", "")),))
        elif record.kind == "incident.resolved":
            state = replace(state, resolved_by=by, resolved_at=record.at, reason=inputs.get("reason"))
        elif record.kind == "incident.reopened":
            state = OnCallState(round=state.round + 1, assignee=state.assignee, comments=state.comments,
                                reason=inputs.get("reason"))
        elif record.kind == "incident.paged" and isinstance(inputs.get("level"), int):
            if inputs.get("round", 0) == state.round:
                state = replace(state, pages=state.pages + (PageSent(inputs["level"], inputs.get("repeat", 0),
                                                                      record.at, tuple(inputs.get("receivers", ()))),))
    return state


# -- a person's transitions -----------------------------------------------------------------------

@dataclass(frozen=True)
class OnCallChange:
    """A transition that may be kept: the record kind, the incident and state after it, and what the
    record says (its `inputs`)."""

    kind: str
    incident: Incident
    state: OnCallState
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def status_changed(self) -> bool:
        return self.kind in ("incident.resolved", "incident.reopened")


def acknowledge(incident: Incident, state: OnCallState, by: str, now: datetime) -> OnCallChange:
    _open(incident, "acknowledge")
    if state.acknowledged_by is not None:
        raise OnCallRefused(OnCallRefusal.ALREADY_ACKNOWLEDGED,
                            f"incident {incident.id} was already acknowledged by {state.acknowledged_by} at "
                            f"{state.acknowledged_at.isoformat() if state.acknowledged_at else '?'}",
                            {"by": state.acknowledged_by})
    return OnCallChange("incident.acknowledged", incident, replace(state, acknowledged_by=by, acknowledged_at=now),
                        {"by": by})


def assign(incident: Incident, state: OnCallState, to: str, by: str, now: datetime) -> OnCallChange:
    _open(incident, "assign")
    to = _text(to, incident, "the assignee's name")
    if state.assignee == to:
        raise OnCallRefused(OnCallRefusal.ALREADY_ASSIGNED, f"incident {incident.id} is already assigned to {to}",
                            {"assignee": to})
    return OnCallChange("incident.assigned", incident, replace(state, assignee=to),
                        {"by": by, "to": to, "previous": state.assignee})


def comment(incident: Incident, state: OnCallState, text: str, by: str, now: datetime) -> OnCallChange:
    """A note on the incident, open or closed (a closed one gathers its follow-ups)."""
    text = _text(text, incident, "the comment's text")
    return OnCallChange("incident.commented", incident,
                        replace(state, comments=state.comments + (Comment(by, now, text),)), {"by": by, "text": text})


def resolve(incident: Incident, state: OnCallState, reason: str, by: str, now: datetime) -> OnCallChange:
    """A person says it is over: the incident is resolved and nothing of its plan that has not run will
    (every action not run yet is skipped with the reason, so a pending approval can no longer be given)."""
    _open(incident, "resolve")
    reason = _text(reason, incident, "a reason")
    why = f"resolved by {by}: {reason}"
    actions, skipped = stand_down(incident.actions, why)
    closed = incident.model_copy(update={"status": IncidentStatus.RESOLVED, "actions": actions, "resolution": why})
    return OnCallChange("incident.resolved", closed, replace(state, resolved_by=by, resolved_at=now, reason=reason),
                        {"by": by, "reason": reason, "from": incident.status.value,
                         "skipped": [a.label for a in skipped]})


def reopen(incident: Incident, state: OnCallState, reason: str, by: str, now: datetime) -> OnCallChange:
    """A closed incident is not over after all: it becomes `open` again, for rtem to take up anew, and
    paging starts over (a new round: acknowledgements and pages of the last one no longer count)."""
    if incident.status == IncidentStatus.MERGED:
        raise OnCallRefused(OnCallRefusal.MERGED, f"incident {incident.id} was merged into {incident.merged_into}; "
                            f"reopen that one", {"merged_into": incident.merged_into})
    if incident.status not in FINAL:
        raise OnCallRefused(OnCallRefusal.NOT_CLOSED, f"incident {incident.id} is {incident.status.value}, not "
                            "closed: there is nothing to reopen", {"status": incident.status.value})
    reason = _text(reason, incident, "a reason")
    opened = incident.model_copy(update={"status": IncidentStatus.OPEN, "resolution": None})
    return OnCallChange("incident.reopened", opened,
                        OnCallState(round=state.round + 1, assignee=state.assignee, comments=state.comments,
                                    reason=reason),
                        {"by": by, "reason": reason, "from": incident.status.value, "round": state.round + 1})


def _open(incident: Incident, verb: str) -> None:
    """Open to a person: not closed, or closed by rtem for a person to act (escalated, failed)."""
    if incident.status in FINAL and incident.status not in AWAITS_PERSON:
        raise OnCallRefused(OnCallRefusal.CLOSED, f"cannot {verb} incident {incident.id}: it is "
                            f"{incident.status.value}" + ("" if incident.status == IncidentStatus.MERGED
                                                          else " (reopen it first)"),
                            {"status": incident.status.value})


def _text(text: str | None, incident: Incident, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise OnCallRefused(OnCallRefusal.MISSING_TEXT, f"{what} is required (incident {incident.id})")
    return text


# -- paging by the escalation policy ---------------------------------------------------------------

# Final for rtem, not for the people it paged: rtem gave up and a person must act, so the policy keeps
# paging (re-page, escalate) until someone acknowledges or resolves them.
AWAITS_PERSON = frozenset({IncidentStatus.ESCALATED, IncidentStatus.FAILED})

@dataclass(frozen=True)
class Page:
    """A page to send now: the route and level, which repeat of that level, and to whom."""

    route: str
    level: int
    repeat: int
    receivers: tuple[str, ...]
    why: str  # first | repeat | escalate

    def key(self, incident_id: str, round_: int = 0) -> str:
        """What makes it unique: never sent twice."""
        return f"{incident_id}/r{round_}/L{self.level}/{self.repeat}"


def due_pages(policy: EscalationPolicy | None, incident: Incident, state: OnCallState, now: datetime, *,
              services: Iterable[str] | None = None) -> list[Page]:
    """The pages due at `now` (an aware datetime). `services` are the incident's entities and the
    services they are instances of (default: its entities). No policy, a closed or acknowledged incident,
    or quiet hours below their severity: nothing."""
    if policy is None or (incident.status in FINAL and incident.status not in AWAITS_PERSON) \
            or state.acknowledged_by is not None:
        return []
    route = policy.route(incident.severity, frozenset(services if services is not None else incident.entities))
    if route is None:
        return []
    if policy.quiet_hours is not None and policy.quiet_hours.holds(incident.severity, now):
        return []
    if not state.pages:
        return [Page(route.id, 0, 0, route.levels[0].receivers, "first")]
    last = state.pages[-1]
    level = min(last.level, len(route.levels) - 1)
    level_started = next(p.at for p in state.pages if p.level == last.level)
    if (route.escalate_after_s is not None and level + 1 < len(route.levels)
            and (now - level_started).total_seconds() >= route.escalate_after_s):
        return [Page(route.id, level + 1, 0, route.levels[level + 1].receivers, "escalate")]
    if route.repeat_every_s is not None and (now - last.at).total_seconds() >= route.repeat_every_s:
        return [Page(route.id, level, last.repeat + 1, route.levels[level].receivers, "repeat")]
    return []
