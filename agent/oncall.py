"""`act`: the one way a person's on-call action is kept, for the CLI, the API and the console alike.

It loads the incident (one the caller may not see answers exactly as one that does not exist), folds
its decision records into the on-call state, checks the transition with the pure functions of
`agent.incident` (typed refusals: closed, not closed, already acknowledged, …), writes a status change
as a compare-and-set on the incident's status (a thread that moved the incident meanwhile makes it a
refusal to try again, never a lost update), and appends one decision record — `incident.acknowledged`,
`incident.assigned`, `incident.commented`, `incident.resolved` or `incident.reopened` — with who, how
and why, whichever surface it came from.

A person's resolve wins over the incident's thread: the store keeps the incident resolved whatever the
thread still writes, and the graph stands down before its next step (docs/lifecycle.md). A reopen makes
the incident `open`: `rtem run` takes it up anew, as it takes up any open incident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from .audit import AuditLog
from .incident import (Incident, OnCallChange, OnCallRefusal, OnCallRefused, OnCallState, acknowledge, assign,
                       comment, oncall_state, reopen, resolve)
from .incident._oncall import KINDS


class OnCallAction(StrEnum):
    ACK = "ack"
    ASSIGN = "assign"
    COMMENT = "comment"
    RESOLVE = "resolve"
    REOPEN = "reopen"


@dataclass(frozen=True)
class Acted:
    """What was kept: the record's kind and seq, the incident's status after it, the on-call state."""

    incident_id: str
    kind: str
    status: str
    state: OnCallState
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"incident": self.incident_id, "record": self.kind, "seq": self.seq, "status": self.status,
                "oncall": self.state.to_dict()}


def state_of(audit: AuditLog, incident_id: str) -> OnCallState:
    """The incident's on-call state, from its decision records."""
    return oncall_state(r for r in audit.records(incident_id=incident_id) if r.kind in KINDS)


def act(store, audit: AuditLog, incident_id: str, action: OnCallAction | str, *, by: str, via: str,
        text: str = "", role: str | None = None, visible: Callable[[dict], bool] | None = None,
        now: datetime | None = None, operator: str | None = None) -> Acted:
    """Keep `by`'s `action` on the incident or raise OnCallRefused. `text` is the assignee (assign), the
    comment (comment) or the reason (resolve, reopen). `visible(row)` hides incidents the caller may not
    see; `operator` (the CLI's `user@host`) is recorded beside `by`."""
    now = now or datetime.now(timezone.utc)
    action = OnCallAction(action)
    row = store.incident(incident_id)
    if row is None or (visible is not None and not visible(row)):
        raise OnCallRefused(OnCallRefusal.NO_SUCH_INCIDENT, f"no incident {incident_id!r}")
    incident = Incident.from_row(row)
    change = _transition(action, incident, state_of(audit, incident.id), text, by, now)
    if change.status_changed:
        _write_status(store, incident, change, by)
    inputs = {**change.inputs, "via": via, "role": role, **({"operator": operator} if operator else {})}
    record = audit.append(change.kind, incident_id=incident.id, node=via, inputs=inputs,
                          decision={"status": change.incident.status.value,
                                    "acknowledged_by": change.state.acknowledged_by, "assignee": change.state.assignee},
                          reasons=[_reason(change, by)], at=now)
    return Acted(incident.id, change.kind, change.incident.status.value, change.state, record.seq)


def _transition(action: OnCallAction, incident: Incident, state: OnCallState, text: str, by: str,
                now: datetime) -> OnCallChange:
    if action == OnCallAction.ACK:
        return acknowledge(incident, state, by, now)
    if action == OnCallAction.ASSIGN:
        return assign(incident, state, text, by, now)
    if action == OnCallAction.COMMENT:
        return comment(incident, state, text, by, now)
    if action == OnCallAction.RESOLVE:
        return resolve(incident, state, text, by, now)
    return reopen(incident, state, text, by, now)


def _write_status(store, before: Incident, change: OnCallChange, by: str) -> None:
    after = change.incident
    if change.kind == "incident.resolved":
        kept = store.close_by_person(before.id, expect_status=before.status.value, status=after.status.value,
                                     actions=[a.to_record() for a in after.actions], resolution=after.resolution or "",
                                     by=by)
    else:
        kept = store.reopen_by_person(before.id, expect_status=before.status.value)
    if not kept:
        now_row = store.incident(before.id)
        raise OnCallRefused(OnCallRefusal.CHANGED, f"incident {before.id} changed from {before.status.value} to "
                            f"{now_row['status'] if now_row else 'gone'} while you acted; look at it again and retry",
                            {"status": now_row["status"] if now_row else None})


def _reason(change: OnCallChange, by: str) -> str:
    inputs = change.inputs
    return {"incident.acknowledged": f"{by} acknowledged: paging stops",
            "incident.assigned": f"{by} assigned it to {inputs.get('to')}",
            "incident.commented": inputs.get("text", ""),
            "incident.resolved": f"{by} resolved it: {inputs.get('reason')}",
            "incident.reopened": f"{by} reopened it: {inputs.get('reason')}"}[change.kind]
