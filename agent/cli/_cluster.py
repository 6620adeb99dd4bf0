"""`rtem cluster status`: the workers on one database, which one leads, its lease and epoch, who owns
which incident, and how far the leader's consumer lags."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape

from ._common import Column, DbOpt, JsonOpt, db_file, fail, out, print_table

cluster_app = typer.Typer(help="Several `rtem run` workers on one database (docs/deployment.md).",
                          no_args_is_help=True)


def cluster_view(db) -> dict[str, Any]:
    """The workers that renewed their heartbeat lately, the leader lease, the incidents' owners, the
    leader's consumer lag as it last saved it, and the schema's state."""
    from ..cluster import INCIDENT, LEADER, WORKER, Leases
    from ..db import status as schema_status
    from ..db import versions
    from ..rules_shared import rules_in_force
    from ..storage import SCHEMAS

    known = versions(db)
    held = Leases(db).holders() if known.get("leases") else []  # no table: no worker ever ran here
    lead = next((lease for lease in held if lease["name"] == LEADER), None)
    incidents = [{"incident": lease["name"][len(INCIDENT):], "worker": lease["holder"], "epoch": lease["epoch"],
                  "live": lease["live"]} for lease in held if lease["name"].startswith(INCIDENT)]
    rules = {row["worker"]: row for row in rules_in_force(db)}
    workers = [{"worker": lease["holder"], "live": lease["live"], "expires_in_s": round(lease["remaining_s"], 1),
                "role": "leader" if lead and lead["live"] and lead["holder"] == lease["holder"] else "standby",
                "incidents": sum(1 for i in incidents if i["live"] and i["worker"] == lease["holder"]),
                "rules": _rules_of(rules.get(lease["holder"]))}
               for lease in held if lease["name"].startswith(WORKER)]
    return {
        "database": db.where,
        "leader": {"worker": lead["holder"], "epoch": lead["epoch"], "live": lead["live"],
                   "expires_in_s": round(lead["remaining_s"], 1)} if lead else None,
        "workers": [w for w in workers if w["live"]],
        "gone": [w["worker"] for w in workers if not w["live"]],
        "incidents": incidents,
        "consumer": _consumer(db) if known.get("store") else None,
        "schema": [s.to_dict() for s in schema_status(db, SCHEMAS)],
    }


def _rules_of(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A worker's rules in force: {"digest", "current" (the cluster's latest version), "at"}."""
    return {"digest": row["digest"], "current": row["current"], "at": row["at"]} if row else None


def _consumer(db) -> dict[str, Any] | None:
    """{"lag", "worker", "at"}: the EVENTS consumer's backlog as the leader last saved it (every few
    seconds), None before any leader consumed."""
    from ..cluster import CONSUMER_STATE

    row = db.connection().execute("SELECT value FROM pipeline_state WHERE key = ?", [CONSUMER_STATE]).fetchone()
    return json.loads(row[0]) if row else None


@cluster_app.command("status")
def status(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """The workers (alive: renewed their heartbeat within the lease), which one leads and at what epoch,
    and whether the database's schema is the one this rtem knows. Exits 1 when no worker leads."""
    from ..db import open_database

    target = db_file(db, "no database here (run `rtem run` first, or pass --db)")
    try:
        database = open_database(target, readonly=True)
    except Exception as exc:  # noqa: BLE001 - a person reads this
        fail(f"cannot open the database: {type(exc).__name__}: {exc}", 1)
    try:
        view = cluster_view(database)
    finally:
        database.close()
    if json_out:
        print(json.dumps(view, indent=2))
    else:
        lead = view["leader"]
        out.print(f"database {view['database']}")
        if lead and lead["live"]:
            out.print(f"leader   [green]{lead['worker']}[/] (epoch {lead['epoch']}, lease renewed, "
                      f"{lead['expires_in_s']}s left)")
        else:
            out.print("leader   [red]none[/]" + (f" (the last, {lead['worker']}, let its lease lapse)" if lead else ""))
        rows = []
        for w in view["workers"]:
            rules = w["rules"]
            shown = "?" if rules is None else rules["digest"][:12] + ("" if rules["current"] else " [red](behind)[/]")
            rows.append([escape(w["worker"]), w["role"], str(w["incidents"]), shown, f"{w['expires_in_s']}s"])
        print_table([Column("worker", ident=True), Column("role"), Column("incidents owned"), Column("rules"),
                     Column("heartbeat lease left")], rows)
        if view["gone"]:
            out.print(f"gone (no heartbeat): {', '.join(view['gone'])}")
        orphaned = [i["incident"] for i in view["incidents"] if not i["live"]]
        if orphaned:
            out.print(f"incidents whose owner stopped renewing (another worker takes them): {', '.join(orphaned)}")
        if view["consumer"]:
            c = view["consumer"]
            out.print(f"consumer lag {c['lag']} events (saved by {c['worker']} at {c['at']})")
    if not (view["leader"] and view["leader"]["live"]):
        raise typer.Exit(1)
