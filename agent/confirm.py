"""`confirm`: the one way a person's confirmed cause is kept, for the CLI, the API and the console alike.

It loads the incident (one the caller may not see answers exactly as one that does not exist), checks the
cause against the topology and the incident with the pure `agent.incident.check_cause`, and appends one
`cause.confirmed` decision record: who, when, the cause, its fault type, a note, and whether rtem's
top-ranked cause agreed. A later confirmation corrects it (the latest counts; all are kept). The incident
row is not touched: the audit log is the one truth, read back with `confirmed_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from rules import Topology

from .audit import AuditLog
from .incident import (CONFIRMED, ConfirmedCause, ConfirmRefusal, ConfirmRefused, check_cause, confirmation,
                       confirmed_cause)

__all__ = ["confirm", "confirmed_of"]


def confirmed_of(audit: AuditLog, incident_id: str, as_of: datetime | None = None) -> ConfirmedCause | None:
    """The incident's confirmed cause as of `as_of` (None: now), from its `cause.confirmed` records."""
    return confirmed_cause(audit.records(incident_id=incident_id, kind=CONFIRMED), as_of)


def confirm(store, audit: AuditLog, incident_id: str, cause: str, *, by: str, via: str,
            fault_type: str | None = None, note: str = "", topology: Topology | None = None,
            role: str | None = None, visible: Callable[[dict], bool] | None = None,
            now: datetime | None = None, operator: str | None = None) -> ConfirmedCause:
    """Keep `by`'s confirmation that `cause` caused the incident, or raise ConfirmRefused. `topology`
    widens the candidates beyond the incident's own entities and lets a service match its instances in
    rtem's ranking; `operator` (the CLI's `user@host`) is recorded beside `by`."""
    now = now or datetime.now(timezone.utc)
    row = store.incident(incident_id)
    if row is None or (visible is not None and not visible(row)):
        raise ConfirmRefused(ConfirmRefusal.NO_SUCH_INCIDENT, f"no incident {incident_id!r}")
    if row["status"] == "merged":
        raise ConfirmRefused(ConfirmRefusal.MERGED, f"incident {row['id']} was merged into {row.get('merged_into')}; "
                             "confirm the cause of that one", {"merged_into": row.get("merged_into")})
    entity = check_cause(cause, row, topology.by_id if topology is not None else ())
    previous = confirmed_of(audit, row["id"])
    decision = confirmation(row, entity, fault_type=(fault_type or "").strip() or None, note=note.strip(), by=by,
                            service_of=topology.service_of if topology is not None else None, previous=previous)
    inputs = {"cause": entity, "fault_type": decision["fault_type"], "note": decision["note"], "by": by, "via": via,
              "role": role, "ranked": [c.get("entity") for c in row.get("root_causes") or []][:5],
              **({"operator": operator} if operator else {})}
    verb = f"corrected the cause (was {previous.entity})" if previous else "confirmed the cause"
    ranked = "as rtem ranked first" if decision["agreed"] else (
        f"rtem ranked {decision['ranked_first']} first" if decision["ranked_first"] else "rtem ranked no cause")
    record = audit.append(CONFIRMED, incident_id=row["id"], node=via, inputs=inputs, decision=decision,
                          reasons=[f"{by} {verb}: {entity}; {ranked}"], at=now)
    return ConfirmedCause.from_record(record)
