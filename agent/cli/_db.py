"""`rtem db status` and `rtem db migrate`: the schema version of each part of rtem's records."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import JsonOpt, fail, out, settings

db_app = typer.Typer(help="The database's schema: which version of each part of rtem's records it holds, and "
                          "migrating it to this rtem's (docs/storage.md).", no_args_is_help=True)

TargetOpt = Annotated[Optional[str], typer.Option(
    "--db", help="A SQLite file or a postgresql:// URL (default: RTEM_DATABASE_URL, else RTEM_DATA_DIR/rtem.db).")]

STATE_COLOUR = {"current": "green", "behind": "yellow", "newer than this rtem": "red"}


def _open(target: str | None, readonly: bool):
    from ..storage import database_of

    cfg = settings()
    try:
        return database_of(cfg, target, readonly=readonly)
    except Exception as exc:  # noqa: BLE001 - a person reads this: which database, and why not
        named = target or ("RTEM_DATABASE_URL" if cfg.database_url else cfg.db_path)
        fail(f"cannot open the database {named}: {type(exc).__name__}: {exc}", 1)


def _table(rows, title: str) -> None:
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("component", "in the database", "this rtem", "state"):
        table.add_column(column)
    for row in rows:
        colour = STATE_COLOUR[row.state]
        table.add_row(row.component, str(row.version or "none"), str(row.known), f"[{colour}]{row.state}[/]")
    out.print(table)


@db_app.command("status")
def status(db: TargetOpt = None, json_out: JsonOpt = False) -> None:
    """Each component's schema version in the database beside the one this rtem knows. Exits 1 when the
    database is newer than this rtem (it would refuse to start on it)."""
    from ..db import status as schema_status
    from ..storage import SCHEMAS

    database = _open(db, readonly=True)
    try:
        rows = schema_status(database, SCHEMAS)
        where = database.where
    finally:
        database.close()
    if json_out:
        print(json.dumps({"database": where, "components": [r.to_dict() for r in rows]}, indent=2))
    else:
        _table(rows, f"schema of {where}")
        behind = [r.component for r in rows if r.state == "behind"]
        if behind:
            out.print(f"{', '.join(behind)}: behind; `rtem db migrate` brings them up to date")
    if any(r.state == "newer than this rtem" for r in rows):
        raise typer.Exit(1)


@db_app.command("migrate")
def migrate(db: TargetOpt = None, json_out: JsonOpt = False) -> None:
    """Bring the database's schema up to this rtem's, one transaction per component (workers starting
    together migrate once). Refuses a database a newer rtem migrated. `rtem run` does this itself on start."""
    from ..db import SchemaTooNew
    from ..db import migrate as schema_migrate
    from ..storage import SCHEMAS

    database = _open(db, readonly=False)
    try:
        where = database.where
        done = schema_migrate(database, SCHEMAS)
    except SchemaTooNew as exc:
        fail(str(exc), 1)
    finally:
        database.close()
    if json_out:
        print(json.dumps({"database": where, "migrated": [{"component": c, "from": a, "to": b} for c, a, b in done]},
                         indent=2))
        return
    if not done:
        out.print(f"{where}: already current")
    for component, before, after in done:
        out.print(f"{where}: {component} {before or 'none'} → {after}")
