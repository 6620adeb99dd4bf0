"""`rtem incidents [show]` and `rtem audit verify | list`: what the store and the audit log hold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from ..incident import IncidentStatus
from ._common import (CONNECT_WAIT_S, VERDICT_COLOUR, Column, DbOpt, IncidentArg, JsonOpt, db_file, err, fail,
                      open_store, out, print_table, settings)

if TYPE_CHECKING:
    from ..audit import AuditCopy
    from ..deciders import Decider

incidents_app = typer.Typer(help="List incidents, newest last, or show one with `rtem incidents show ID`. Ids are "
                                 "printed whole; into a pipe the list is plain aligned lines (docs/cli.md).",
                            invoke_without_command=True)
audit_app = typer.Typer(help="The append-only, hash-chained audit log.", no_args_is_help=True)

NO_AUDIT_LOG = "no audit log here"


@incidents_app.callback()
def incidents(ctx: typer.Context, json_out: JsonOpt = False, db: DbOpt = None,
              status: Annotated[Optional[IncidentStatus], typer.Option(
                  help="Only incidents with this status.", case_sensitive=False)] = None) -> None:
    """List incidents, newest last. Ids are printed whole (the id is what `rtem incidents show` and `rtem
    approve` take); into a pipe the table is plain aligned lines."""
    if ctx.invoked_subcommand:
        return
    from ..analyze import incident_report
    from ..audit import AuditLog
    from ..deciders import deciders

    store = open_store(db)
    rows = store.incidents(status=status.value if status else None)
    with AuditLog(store.db) as audit:
        decided = deciders(audit)
    if json_out:
        reasoner = {incident: d.to_dict() for incident, d in decided.items()}
        print(json.dumps({"incidents": [{**incident_report(r), "status": r["status"], "reasoner": reasoner.get(r["id"])}
                                        for r in rows]}, indent=2))
        return
    if not rows:
        out.print(f"no {status.value} incidents" if status else "no incidents")
        return
    columns = [Column("id", ident=True), Column("opened", keep=True), Column("status", keep=True),
               Column("severity", keep=True), Column("events", keep=True), Column("root cause"), Column("actions"),
               Column("decided by")]
    table = []
    for r in rows:
        top = r["root_causes"][0] if r["root_causes"] else None
        table.append([escape(r["id"]), _to_the_second(r["opened_at"]), r["status"], r["severity"], str(r["event_count"]),
                      escape(f"{top['entity']} ({top['fault_type']}, {top['confidence']:.2f})") if top else "-",
                      escape(", ".join(f"{a['type']}:{a['verdict']}" for a in r["actions"])) or "-",
                      _decider_label(decided.get(r["id"]))])
    print_table(columns, table)


@incidents_app.command("show")
def incidents_show(incident_id: IncidentArg, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """One incident: its entities, ranked root causes and the verdict on each proposed action."""
    from ..analyze import incident_report

    from ..audit import AuditLog
    from ..confirm import confirmed_of
    from ..deciders import topology_gaps
    from ..oncall import state_of
    from ..reasoner import described_note, unlisted_note

    store = open_store(db)
    row = store.incident(incident_id)
    if row is None:
        fail(f"no incident {incident_id!r} (see `rtem incidents`)", 1)
    with AuditLog(store.db) as audit:
        oncall = state_of(audit, row["id"]).to_dict()  # who acknowledged, the assignee, comments, pages
        confirmed = confirmed_of(audit, row["id"])  # a person's word on the cause, the latest counting
        # entities the topology did not hold: never weighed, or weighed as their events said their service
        missing, described = topology_gaps(audit, row["id"])
    report = {**incident_report(row), "status": row["status"], "severity": row["severity"],
              "detections": row["detections"], "versions": row["versions"], "resolution": row.get("resolution"),
              "actions": row["actions"], "oncall": oncall,  # the whole plan: status, why, approval, outcome
              "confirmed": confirmed.to_dict() if confirmed else None, "unlisted": missing, "described": described}
    if json_out:
        print(json.dumps(report, indent=2))
        return
    print_incident(report, notes=(described_note(described), unlisted_note(missing)))
    out.print(f"status {row['status']} · severity {row['severity']} · detections {', '.join(row['detections'])}")
    out.print(escape(f"on call: acknowledged by {oncall['acknowledged_by'] or 'nobody'} · assignee "
                     f"{oncall['assignee'] or 'none'} · {len(oncall['pages'])} page(s)"))
    for note in oncall["comments"]:
        out.print(escape(f"  {note['at']} {note['by']}: {note['text']}"))
    out.print(escape(f"confirmed cause: {confirmed.describe() if confirmed else 'none yet'}"))


def print_incident(inc: dict, notes: Iterable[str | None] = ()) -> None:
    """An incident report (`agent.analyze.incident_report`): ranked causes (and `notes` on them, in yellow;
    None skipped) and the verdicts on its actions."""
    out.print(f"\n[bold]{inc['id']}[/]  opened {inc['opened_at']}  ·  {inc['event_count']} events  ·  "
              f"{len(inc['entities'])} entities")
    print_table([Column("#"), Column("entity", ident=True), Column("fault"), Column("confidence"), Column("evidence")],
                [[str(rank), escape(cause["entity"]), escape(cause["fault_type"]), f"{cause['confidence']:.2f}",
                  str(len(cause["evidence"]))] for rank, cause in enumerate(inc["root_causes"], 1)],
                title="ranked root causes")
    if inc["root_causes"]:
        out.print(f"[dim]{escape(inc['root_causes'][0]['explanation'])}[/]")
    for note in notes:
        if note:
            out.print(f"[yellow]note: {escape(note)}[/]")
    dry = inc.get("status") in (None, "diagnosed")
    columns = ("action", "target", "verdict", "rules", "reason") if dry else (
        "#", "action", "target", "verdict", "status", "approval", "why")
    rows = []
    for action in inc["actions"]:
        verdict = f"[{VERDICT_COLOUR[action['verdict']]}]{action['verdict']}[/]"
        if dry:
            rows.append([escape(action["type"]), escape(action["target"]), verdict,
                         escape(", ".join(action["rules"])) or "-", escape(action["reason"])])
            continue
        approval = action.get("approval") or {}
        decided = f"{approval['decision']} by {approval['by']}" if approval else "-"
        why = action.get("status_reason") or (action.get("outcome") or {}).get("error") or action["reason"]
        rows.append([str(action["index"]), escape(action["type"]), escape(action["target"]), verdict,
                     action.get("status") or "-", escape(decided), escape(why or "-")])
    print_table([Column(c, ident=c == "target") for c in columns], rows,
                title="proposed actions (dry run)" if dry else "actions")


def _to_the_second(iso: str) -> str:
    """"2024-05-01T12:00:00.000Z" → "2024-05-01T12:00:00Z": milliseconds only take room in a listing."""
    head, dot, rest = iso.partition(".")
    return head + "Z" if dot and rest.endswith("Z") else iso


def _decider_label(decided: Decider | None) -> str:
    if decided is None:
        return "-"
    if decided.degraded:
        return "[yellow]deterministic (degraded: LLM breaker open)[/]"
    if decided.fallback:
        return "[yellow]deterministic (LLM fallback)[/]"
    return decided.reasoner + (f" ({decided.model})" if decided.reasoner == "llm" else "")


@audit_app.command("verify")
def audit_verify(
    json_out: JsonOpt = False, db: DbOpt = None,
    nats: Annotated[Optional[str], typer.Option(
        "--nats", help="Also compare with the AUDIT stream on this NATS server (default: RTEM_NATS_URL, else "
                       "the running service's DATA_DIR/nats.url when present).")] = None,
    local_only: Annotated[bool, typer.Option(
        "--local-only", help="Check the hash chain only; do not compare with the AUDIT stream.")] = False,
) -> None:
    """Check the hash chain, and compare the log with its copy on the JetStream AUDIT stream: exits 1 and
    names each changed, deleted or reordered record, and each one missing from either side or different."""
    from ..audit import verify_file

    target = db_file(db, NO_AUDIT_LOG)
    url, auth = (None, None) if local_only else (nats, None) if nats else _service_nats(target)
    copy = None
    if url:
        try:
            copy = asyncio.run(_read_audit_stream(url, auth, quiet=json_out))
        except Exception as exc:  # noqa: BLE001 - any failure to read the copy is reported the same way
            reason = (f"cannot read the AUDIT stream at {url}: {type(exc).__name__}: "
                      f"{str(exc) or 'no answer'}")
            if nats:
                fail(reason)
            err.print(f"[yellow]warning:[/] {escape(reason)}; only the hash chain was checked "
                      "(is `rtem run` running? pass --nats URL, or --local-only)")
    with _reading_audit(target):
        report = verify_file(target, copy=copy)
    if json_out:
        print(report.model_dump_json(indent=2))
    else:
        (out if report.ok else err).print(escape(report.summary()))
        for problem in report.problems:
            err.print(f"  seq {problem.seq}: {problem.kind}: {escape(problem.detail)}")
        if report.omitted:
            err.print(f"  … and {report.omitted} more")
    raise typer.Exit(0 if report.ok else 1)


@contextlib.contextmanager
def _reading_audit(target: str | Path):
    """Exits with what failed, naming the database (a URL without its password), when the log cannot be read."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a person reads this: which database, and why not
        from ..db import redacted

        where = redacted(target)
        fail(f"cannot read the audit log in {where}: {type(exc).__name__}: {exc}", 1)


def _service_nats(target: str | Path):
    """RTEM_NATS_URL (with the configured credentials), else the URL of the embedded server the service
    on this data directory wrote, with rtem's own credentials for it (docs/nats.md). The data directory is
    the SQLite file's; a PostgreSQL log's is RTEM_DATA_DIR."""
    from bus import RTEM_USER, embedded_credentials

    cfg = settings()
    if cfg.nats_url:
        return cfg.nats_url, None
    data_dir = target.parent if isinstance(target, Path) else Path(cfg.data_dir)
    written = data_dir / "nats.url"
    if not written.is_file():
        return None, None
    return written.read_text().strip() or None, embedded_credentials(data_dir / "nats", RTEM_USER)


async def _read_audit_stream(url: str, auth=None, *, quiet: bool = False) -> AuditCopy:
    from dataclasses import replace

    from bus import Bus

    from ..audit import AuditCopy

    # The client logs every failed connection attempt with a traceback; one line below says it instead.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    bus_settings = settings().bus_settings()
    if auth is not None:
        bus_settings = replace(bus_settings, auth=auth)
    bus = await Bus.connect(url, bus_settings, name="rtem-audit-verify", give_up_s=CONNECT_WAIT_S)
    try:
        copy = AuditCopy(source=url)
        with err.status(f"reading the AUDIT stream at {url}…") if not quiet else contextlib.nullcontext():
            async for stream_seq, data in bus.audit_messages():
                copy.add(data, where=f"#{stream_seq}")
        return copy
    finally:
        await bus.close()


@audit_app.command("list")
def audit_list(incident: Annotated[Optional[str], typer.Option(help="Only this incident's records.")] = None,
               json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Decision records, oldest first: what was decided, on what inputs, by which rule and model versions."""
    from ..audit import AuditLog

    target = db_file(db, NO_AUDIT_LOG)
    with _reading_audit(target), AuditLog(target) as audit:
        records = audit.records(incident_id=incident)
    if json_out:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    print_table([Column("seq"), Column("at"), Column("incident", ident=True), Column("kind"), Column("node"),
                 Column("reasons")],
                [[str(r.seq), r.at.isoformat(timespec="seconds"), escape(r.incident_id or "-"), r.kind, r.node,
                  escape("; ".join(r.reasons)[:200])] for r in records])
