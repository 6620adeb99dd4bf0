"""`rtem approve | reject`: a person's decision on an action that waits for one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import DbOpt, IncidentArg, JsonOpt, fail, open_ledger, open_store, out, settings, database_target


ActionArg = Annotated[str, typer.Argument(help="The action's index or type, as `rtem incidents show` lists.")]
ByOpt = Annotated[Optional[str], typer.Option(help="Who decides (default: your user name).")]
ReasonOpt = Annotated[str, typer.Option(help="Why, for the audit log.")]


def approve(incident_id: IncidentArg, action: ActionArg, by: ByOpt = None, reason: ReasonOpt = "",
            json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Approve an action that waits for a person. Kept in the store: it survives a service restart."""
    _decide(incident_id, action, True, by, reason, db, json_out)


def reject(incident_id: IncidentArg, action: ActionArg, by: ByOpt = None, reason: ReasonOpt = "",
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Reject an action that waits for a person; it will not run."""
    _decide(incident_id, action, False, by, reason, db, json_out)


def _decide(incident_id: str, action: str, approve: bool, by: str | None, reason: str, db: Path | None,
            json_out: bool) -> None:
    from ..approvals import decide
    from ..audit import AuditLog
    from ..incident import DecisionRefused, Policy
    from ..identity import operator

    store, ledger = open_store(db), open_ledger(db)
    who = by or operator()
    with AuditLog(database_target(db)) as audit:
        try:
            decided = decide(store, ledger, audit, incident_id, action, approve=approve, by=who, reason=reason,
                             via="cli", policy=Policy(approval_ttl_s=settings().approval_ttl_s), operator=operator())
        except DecisionRefused as refused:
            fail(refused.message + ("" if refused.kind != "no_such_incident" else " (see `rtem incidents`)"), 1)
    if json_out:
        print(json.dumps(decided.to_dict()))
    else:
        labels = ", ".join(a.label for a in decided.actions)
        out.print(f"{decided.approval.decision}d {labels} of {decided.incident_id} as {who}; "
                  "the service picks it up within a second")
