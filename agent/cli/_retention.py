"""`rtem purge`: delete what the retention settings no longer keep (docs/retention.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ._common import DbOpt, JsonOpt, db_file, err, fail, out, settings

WHAT = (("events of closed incidents", "events", "incidents"),
        ("events of no incident", "unattached_events", None),
        ("graph checkpoints", "checkpoints", "checkpoint_threads"),
        ("audit records", "audit_records", None))


def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete and record nothing.")] = False,
    json_out: JsonOpt = False, db: DbOpt = None,
) -> None:
    """Delete stored events, graph checkpoints (checkpoints.db beside a SQLite store, or the checkpoint
    tables of a PostgreSQL one) and audit records older than the retention settings (RTEM_RETAIN_EVENTS_DAYS,
    RTEM_RETAIN_CHECKPOINTS_DAYS, RTEM_RETAIN_AUDIT_DAYS). Safe beside a running `rtem run`; recorded as
    `retention.purged`, and `rtem audit verify` still accepts the log."""
    from ..audit import AuditLog
    from ..db import redacted
    from ..identity import operator
    from ..store import IncidentStore, RetentionPolicy
    from ..store import purge as purge_store

    cfg = settings()
    policy = RetentionPolicy.from_settings(cfg)
    path = db_file(db, "no store here (run `rtem run` or `rtem analyze` first, or pass --db)")
    store = IncidentStore(path, synchronous=cfg.sqlite_synchronous)
    try:
        with AuditLog(path) as audit, Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err,
                                               transient=True, disable=json_out) as bar:
            task = bar.add_task("counting" if dry_run else "purging")

            def progress(what: str, rows: int) -> None:
                bar.update(task, description=f"{'counting' if dry_run else 'purging'} {what}: {rows} rows")

            report = purge_store(store, audit, policy, dry_run=dry_run, actor=operator(), progress=progress)
    except Exception as exc:  # noqa: BLE001 - a person reads this: what failed, where, what to do
        fail(f"{redacted(path)}: purge failed ({type(exc).__name__}: {exc}); nothing after the failing step was "
             "deleted; run it again", 1)
    finally:
        store.close()
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title="would be purged (dry run)" if dry_run else "purged", title_justify="left", show_edge=False)
    for column in ("what", "rows", "older than (UTC)"):
        table.add_column(column)
    cutoff = {"events": "events", "unattached_events": "events", "checkpoints": "checkpoints",
              "audit_records": "audit"}
    for label, key, of in WHAT:
        rows = getattr(report, key)
        detail = f" ({getattr(report, of)} incidents)" if of else ""
        table.add_row(label, f"{rows}{detail}", report.cutoffs[cutoff[key]][:19].replace("T", " "))
    out.print(table)
    anchor = report.audit_anchor.get("seq") or 0
    if dry_run:
        out.print("dry run: nothing deleted, nothing recorded")
    else:
        out.print(f"recorded as audit seq {report.audit_seq} (retention.purged)"
                  + (f"; the audit log now starts after seq {anchor}, which `rtem audit verify` checks from"
                     if anchor else ""))
