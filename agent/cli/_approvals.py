"""`rtem approve | reject`: a person's decision on an action that waits for one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import DbOpt, IncidentArg, JsonOpt, fail, open_ledger, open_store, out, store_path


def approve(incident_id: IncidentArg,
            action: Annotated[str, typer.Argument(help="The action's index or type, as `rtem incidents show` lists.")],
            by: Annotated[Optional[str], typer.Option(help="Who approves (default: your user name).")] = None,
            reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
            json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Approve an action that waits for a person. Kept in the store: it survives a service restart."""
    _decide(incident_id, action, True, by, reason, db, json_out)


def reject(incident_id: IncidentArg,
           action: Annotated[str, typer.Argument(help="The action's index or type.")],
           by: Annotated[Optional[str], typer.Option(help="Who rejects (default: your user name).")] = None,
           reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Reject an action that waits for a person; it will not run."""
    _decide(incident_id, action, False, by, reason, db, json_out)


def _decide(incident_id: str, action: str, approve: bool, by: str | None, reason: str, db: Path | None,
            json_out: bool) -> None:
    from ..run import operator

    row = open_store(db).incident(incident_id)
    if row is None:
        fail(f"no incident {incident_id!r} (see `rtem incidents`)", 1)
    actions = row["actions"]
    matches = [a for a in actions if str(a.get("index")) == action or a["type"] == action]
    pending = [a for a in matches if a["verdict"] == "require_approval"]
    if not pending:
        needing = ", ".join(f"{a['index']} ({a['type']} on {a['target']})" for a in actions
                            if a["verdict"] == "require_approval") or "none"
        fail(f"incident {row['id']} has no action {action!r} that needs approval; those that do: {needing}", 1)
    ledger = open_ledger(db)
    who = by or operator()
    from ..audit import AuditLog

    with AuditLog(store_path(db)) as audit:
        for a in pending:
            ledger.decide(row["id"], a["index"], approve, who, reason)
            # The same record the API writes, so every human decision is in the log when it is made.
            audit.append("approval.decided", incident_id=row["id"], node="cli",
                         inputs={"user": who, "via": "rtem approve" if approve else "rtem reject",
                                 "action": {"index": a["index"], "type": a["type"], "target": a["target"]}},
                         decision={"decision": "approve" if approve else "reject", "by": who},
                         reasons=[reason or f"{who} gave no reason"])
    result = {"incident": row["id"], "actions": [a["index"] for a in pending],
              "decision": "approve" if approve else "reject", "by": who}
    if json_out:
        print(json.dumps(result))
    else:
        labels = ", ".join(f"#{a['index']} {a['type']} on {a['target']}" for a in pending)
        out.print(f"{result['decision']}d {labels} of {row['id']} as {who}; "
                  "the service picks it up within a second")
