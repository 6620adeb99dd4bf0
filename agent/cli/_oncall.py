"""`rtem incidents ack | assign | comment | resolve | reopen`: a person's on-call actions, each kept
as a decision record by `agent.oncall.act` (the same as the API's and the console's)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from ._common import DbOpt, IncidentArg, JsonOpt, database_target, db_file, fail, out

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why, for the audit log (required).")]
ToOpt = Annotated[str, typer.Option("--to", help="Who takes the incident: a person's or a rotation's name.")]
TextArg = Annotated[str, typer.Argument(help="The comment (quote it).")]


def ack(incident_id: IncidentArg, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Acknowledge an incident: you have it; the escalation policy stops paging about it."""
    _act(incident_id, "ack", "", db, json_out)


def assign(incident_id: IncidentArg, to: ToOpt, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Assign an incident to a person or rotation."""
    _act(incident_id, "assign", to, db, json_out)


def comment(incident_id: IncidentArg, text: TextArg, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Add a comment to an incident (open or closed)."""
    _act(incident_id, "comment", text, db, json_out)


def resolve(incident_id: IncidentArg, reason: ReasonOpt, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Resolve an incident by hand: nothing of its plan that has not run will run; paging stops."""
    _act(incident_id, "resolve", reason, db, json_out)


def reopen(incident_id: IncidentArg, reason: ReasonOpt, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Reopen a closed incident: it is open again, rtem takes it up anew and paging starts over."""
    _act(incident_id, "reopen", reason, db, json_out)


COMMANDS = (ack, assign, comment, resolve, reopen)


def _act(incident_id: str, action: str, text: str, db: str | None, json_out: bool) -> None:
    from ..audit import AuditLog
    from ..identity import operator
    from ..incident import OnCallRefused
    from ..oncall import act
    from ..store import IncidentStore

    who = operator()
    store = IncidentStore(db_file(db, "no store here yet (run `rtem run`, or pass --db)"))
    try:
        with AuditLog(database_target(db)) as audit:
            try:
                acted = act(store, audit, incident_id, action, by=who, via="cli", text=text, operator=who)
            except OnCallRefused as refused:
                suffix = " (see `rtem incidents`)" if refused.kind == "no_such_incident" else ""
                fail(refused.message + suffix, 1)
    finally:
        store.close()
    if json_out:
        print(json.dumps(acted.to_dict()))
        return
    out.print(f"{escape(acted.kind)} {escape(acted.incident_id)} by {escape(who)} (audit seq {acted.seq}); "
              f"status {acted.status}")
