"""`rtem learn status` and `rtem learn reset`: what rtem has learned from confirmed causes, and forgetting
it (audited). The learning itself is `agent/learning.py`; the model is `agent/reasoner/_learned.py`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from ._common import DbOpt, JsonOpt, TopologyOpt, db_file, err, open_store, out, settings, topology_or_analyzed

learn_app = typer.Typer(help="What rtem learned from confirmed causes (rtem incidents confirm), and forgetting it.",
                        no_args_is_help=True)

NoteOpt = Annotated[str, typer.Option("--note", help="Why, for the audit log.")]


@learn_app.command("status")
def learn_status(topology: TopologyOpt = None, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """How many confirmed incidents are learned from, how much say they have against the cold-start
    ranking, the features that weigh most, in words, and how often rtem had ranked the confirmed cause
    first (as of now, after the latest reset)."""
    from ..audit import AuditLog
    from ..learning import status

    target = db_file(db, "no store here yet (run `rtem analyze` or `rtem run`, or pass --db)")
    topo = topology_or_analyzed(settings(), topology, target, quiet=json_out, required=True)
    store = open_store(db)
    try:
        with AuditLog(target) as audit:
            # a fit over every confirmed incident: seconds with dozens (docs/learning.md, "Cost")
            with err.status("fitting what the confirmed causes teach", spinner="dots"):
                found = status(store, audit, topo)
    finally:
        store.close()
    if json_out:
        print(json.dumps(found))
        return
    reset = f" (since the reset at audit seq {found['reset_seq']})" if found["reset_seq"] else ""
    out.print(escape(f"{found['confirmed']} confirmed incidents{reset}; learned from {found['learned_from']} "
                     f"(the others' cause was no candidate, or they had not ended); weight against the cold start "
                     f"{found['blend']:.2f} = n/(n+{found['k']:g})"))
    for feature in found["features"]:
        out.print(escape(f"  {feature['weight']:+.2f}  {feature['says']}"))
    if not found["features"]:
        out.print(escape(found["summary"]))
    ranked, learned = found["ranked"], found["ranked"]["with_learning"]
    if ranked["confirmed"]:
        since = (f"; of the {learned['confirmed']} diagnosed with what it had learned by then: {learned['first']} "
                 f"first, {learned['top3']} in the top 3") if learned["confirmed"] else ""
        out.print(escape(f"rtem had ranked the confirmed cause first in {ranked['first']} of {ranked['confirmed']} "
                         f"confirmed incidents, in its top 3 in {ranked['top3']}{since}"))


@learn_app.command("reset")
def learn_reset(note: NoteOpt = "", json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Forget what was learned: confirmations made so far stay in the audit log and in reports, but
    incidents diagnosed from now on learn only from confirmations made after this (a learn.reset record)."""
    from ..audit import AuditLog
    from ..identity import operator
    from ..learning import reset

    who = operator()
    with AuditLog(db_file(db, "no audit log here")) as audit:
        record = reset(audit, by=who, via="cli", note=note)
    if json_out:
        print(json.dumps({"record": record.kind, "seq": record.seq, "by": who, **record.decision}))
        return
    out.print(escape(f"learn.reset (audit seq {record.seq}) by {who}: {record.decision['forgotten']} confirmed causes "
                     "are no longer learned from"))
