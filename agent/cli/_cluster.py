"""`rtem cluster status`: the workers on one database, which one leads, its lease and epoch."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from ._common import DbOpt, JsonOpt, db_file, fail, out

cluster_app = typer.Typer(help="Several `rtem run` workers on one database (docs/deployment.md).",
                          no_args_is_help=True)


def cluster_view(db) -> dict[str, Any]:
    """The workers that renewed their heartbeat lately, the leader lease, and the schema's state."""
    from ..cluster import LEADER, WORKER, Leases
    from ..db import status as schema_status
    from ..db import versions
    from ..storage import SCHEMAS

    held = Leases(db).holders() if versions(db).get("leases") else []  # no table: no worker ever ran here
    lead = next((lease for lease in held if lease["name"] == LEADER), None)
    workers = [{"worker": lease["holder"], "live": lease["live"], "expires_in_s": round(lease["remaining_s"], 1),
                "role": "leader" if lead and lead["live"] and lead["holder"] == lease["holder"] else "standby"}
               for lease in held if lease["name"].startswith(WORKER)]
    return {
        "database": db.where,
        "leader": {"worker": lead["holder"], "epoch": lead["epoch"], "live": lead["live"],
                   "expires_in_s": round(lead["remaining_s"], 1)} if lead else None,
        "workers": [w for w in workers if w["live"]],
        "gone": [w["worker"] for w in workers if not w["live"]],
        "schema": [s.to_dict() for s in schema_status(db, SCHEMAS)],
    }


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
        table = Table(show_edge=False)
        for column in ("worker", "role", "heartbeat lease left"):
            table.add_column(column)
        for w in view["workers"]:
            table.add_row(w["worker"], w["role"], f"{w['expires_in_s']}s")
        out.print(table)
        if view["gone"]:
            out.print(f"gone (no heartbeat): {', '.join(view['gone'])}")
    if not (view["leader"] and view["leader"]["live"]):
        raise typer.Exit(1)
