"""One meaning of "approve": the checks every surface (CLI, API, console) makes before a person's
decision is kept, with typed refusals.

`check_decision` is pure; `agent.approvals.decide` loads the incident, calls it, writes the ledger
(atomically: a second decision on the same action is refused there too) and the audit record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from ._model import ActionStatus, Approval, Incident, PlannedAction, Policy


class Refusal(StrEnum):
    NO_SUCH_INCIDENT = "no_such_incident"
    NO_SUCH_ACTION = "no_such_action"
    OUT_OF_SCOPE = "out_of_scope"
    WRONG_ROLE = "wrong_role"
    NOT_AWAITING = "not_awaiting_approval"
    ALREADY_DECIDED = "already_decided"
    EXPIRED = "expired"

    @property
    def http_status(self) -> int:
        return {Refusal.NO_SUCH_INCIDENT: 404, Refusal.NO_SUCH_ACTION: 404, Refusal.OUT_OF_SCOPE: 403,
                Refusal.WRONG_ROLE: 403}.get(self, 409)


class DecisionRefused(Exception):
    """A decision that was not kept, and why; `kind` tells the surface how to answer."""

    def __init__(self, kind: Refusal, message: str, detail: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail or {}


def select(incident: Incident, selector: int | str) -> list[PlannedAction]:
    """The actions a person means: an index, or a type (every action of that type that waits)."""
    text = str(selector)
    if text.isdigit():
        action = incident.action(int(text))
        if action is None:
            raise DecisionRefused(Refusal.NO_SUCH_ACTION, f"incident {incident.id} has no action {text}",
                                  {"actions": [a.label for a in incident.actions]})
        return [action]
    typed = [a for a in incident.actions if a.type == text]
    if not typed:
        waits = [a.label for a in incident.actions if a.status == ActionStatus.AWAITING_APPROVAL]
        raise DecisionRefused(Refusal.NO_SUCH_ACTION, f"incident {incident.id} has no action {text!r}; waiting for "
                              "approval: " + (", ".join(waits) or "none"))
    return [a for a in typed if a.status == ActionStatus.AWAITING_APPROVAL] or typed[:1]


def check_decision(incident: Incident, action: PlannedAction, earlier: Approval | None, now: datetime,
                   policy: Policy, authorize: Callable[[PlannedAction], tuple[str, str] | None] | None = None) -> None:
    """Raise DecisionRefused unless a person may decide `action` now. `authorize(action)` returns
    (refusal kind, message) for a caller whose scope or role does not allow it, or None."""
    if authorize is not None:
        refused = authorize(action)
        if refused is not None:
            raise DecisionRefused(Refusal(refused[0]), refused[1])
    if earlier is not None:
        raise DecisionRefused(Refusal.ALREADY_DECIDED, f"{action.label} of {incident.id} was already decided: "
                              f"{earlier.decision} by {earlier.by} at {earlier.at.isoformat()}",
                              {"decision": earlier.decision, "by": earlier.by})
    if action.status != ActionStatus.AWAITING_APPROVAL:
        waits = [a.label for a in incident.actions if a.status == ActionStatus.AWAITING_APPROVAL]
        raise DecisionRefused(Refusal.NOT_AWAITING, f"{action.label} of {incident.id} does not wait for approval "
                              f"(verdict {action.verdict}, status {action.status.value}); waiting: "
                              + (", ".join(waits) or "none"),
                              {"verdict": action.verdict, "status": action.status.value})
    if action.requested_at is not None and (now - action.requested_at).total_seconds() > policy.approval_ttl_s:
        raise DecisionRefused(Refusal.EXPIRED, f"the approval request for {action.label} of {incident.id} expired "
                              f"{policy.approval_ttl_s:.0f}s after {action.requested_at.isoformat()}")
