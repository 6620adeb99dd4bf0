"""`rtem incidents confirm ID --cause ENTITY`: a person's confirmed cause, kept as a `cause.confirmed`
decision record by `agent.confirm.confirm` (the same as the API's and the console's)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ._common import (DbOpt, IncidentArg, JsonOpt, TopologyOpt, db_file, fail, open_store, out, settings,
                      topology_or_analyzed)

CauseOpt = Annotated[str, typer.Option("--cause", help="The entity that really caused it: one of the topology's "
                                       "or of the incident's (a service also matches its instances).")]
FaultOpt = Annotated[Optional[str], typer.Option("--fault-type", help="What went wrong with it, e.g. "
                                                 "'container memory load'.")]
NoteOpt = Annotated[str, typer.Option("--note", help="Anything else worth keeping, for the audit log.")]


def confirm(incident_id: IncidentArg, cause: CauseOpt, fault_type: FaultOpt = None, note: NoteOpt = "",
            topology: TopologyOpt = None, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Confirm what really caused an incident (open or closed). Confirm again to correct it: every
    confirmation is kept in the audit log and the latest counts."""
    from ..audit import AuditLog
    from ..confirm import confirm as keep
    from ..identity import operator
    from ..incident import ConfirmRefused

    target = db_file(db, "no store here yet (run `rtem analyze` or `rtem run`, or pass --db)")
    topo = topology_or_analyzed(settings(), topology, target, quiet=json_out)
    who = operator()
    store = open_store(db)
    try:
        with AuditLog(target) as audit:
            try:
                confirmed = keep(store, audit, incident_id, cause, by=who, via="cli", fault_type=fault_type,
                                 note=note, topology=topo, operator=who)
            except ConfirmRefused as refused:
                suffix = " (see `rtem incidents`)" if refused.kind == "no_such_incident" else ""
                hint = "" if topo is not None or refused.kind != "unknown_entity" else \
                    " (pass --topology to name any entity of the topology)"
                fail(refused.message + suffix + hint, 1)
    finally:
        store.close()
    if json_out:
        print(json.dumps({"record": "cause.confirmed", **confirmed.to_dict()}))
        return
    out.print(escape(f"cause.confirmed {confirmed.incident_id} (audit seq {confirmed.seq}): {confirmed.describe()}"))
