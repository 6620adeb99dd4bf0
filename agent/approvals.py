"""`decide`: the one way a person's approval or rejection is kept, for the CLI, the API, the console
and the demo's operator alike.

It loads the incident, checks the decision with the pure `agent.incident.check_decision` (typed
refusals: not awaiting approval, already decided, expired, out of scope, wrong role), keeps it in the
ledger with an insert that never overwrites (two people deciding at once: the second is refused),
and appends the same `approval.decided` record whichever surface it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from .audit import AuditLog
from .incident import (ActionStatus, Approval, DecisionRefused, Incident, PlannedAction, Policy, Refusal,
                       check_decision, select)
from .ledger import Ledger, ledger_scope

Authorize = Callable[[PlannedAction], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Decided:
    incident_id: str
    actions: list[PlannedAction]
    approval: Approval

    def to_dict(self) -> dict:
        return {"incident": self.incident_id, "actions": [a.index for a in self.actions],
                "decision": self.approval.decision, "by": self.approval.by}


def decide(store, ledger: Ledger, audit: AuditLog, incident_id: str, selector: int | str, *, approve: bool,
           by: str, reason: str = "", via: str, role: str | None = None, policy: Policy = Policy(),
           visible: Callable[[dict], bool] | None = None, authorize: Authorize | None = None,
           now: datetime | None = None, operator: str | None = None) -> Decided:
    """Keep `by`'s decision on the incident's action(s) named by `selector` (an index, or a type), or
    raise DecisionRefused. `visible(row)` hides incidents the caller may not see (answered as if they
    did not exist); `authorize(action)` refuses by scope or role; `operator` (the CLI's `user@host`) is
    recorded beside `by`, which a person may have named otherwise (`rtem approve --by`)."""
    now = now or datetime.now(timezone.utc)
    row = store.incident(incident_id)
    if row is None or (visible is not None and not visible(row)):
        raise DecisionRefused(Refusal.NO_SUCH_INCIDENT, f"no incident {incident_id!r}")
    incident = Incident.from_row(row)
    chosen = select(incident, selector)
    scope = ledger_scope(audit, incident.id)
    earlier = ledger.decisions(scope)
    for action in chosen:
        check_decision(incident, action, earlier.get(action.index), now, policy, authorize)
    kept: list[PlannedAction] = []
    approval = None
    for action in chosen:
        approval = ledger.decide(scope, action.index, approve, by, reason, at=now)
        if approval is None:  # someone else's decision landed between the check and this insert
            theirs = ledger.decisions(scope)[action.index]
            raise DecisionRefused(Refusal.ALREADY_DECIDED, f"{action.label} of {incident.id} was already decided: "
                                  f"{theirs.decision} by {theirs.by} at {theirs.at.isoformat()}")
        audit.append("approval.decided", incident_id=incident.id, node=via,
                     inputs={"by": by, "via": via, "role": role, **({"operator": operator} if operator else {}),
                             "action": {"index": action.index, "type": action.type, "target": action.target}},
                     decision={"decision": approval.decision, "by": by},
                     reasons=[reason or f"{by} gave no reason"])
        kept.append(action)
    return Decided(incident.id, kept, approval)


def awaiting(row: dict) -> list[PlannedAction]:
    """The actions of a stored incident that wait for a person."""
    return [a for a in Incident.from_row(row).actions if a.status == ActionStatus.AWAITING_APPROVAL]
