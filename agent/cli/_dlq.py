"""`rtem dlq list | show | redrive | purge`: the dead letters of the running service's bus.

The commands connect like `rtem audit verify`: RTEM_NATS_URL with the configured credentials, else the
embedded server that `rtem run` on RTEM_DATA_DIR wrote (DATA_DIR/nats.url) with rtem's own credentials.
Redrives and purges are audit records in the service's database (`--db`), in the name of `user@host`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..dlq import DeadLetterKind, DeadLetterQueue, DlqError, DlqFilter, RedriveReport
from ._common import CONNECT_WAIT_S, Column, DbOpt, JsonOpt, database_target, db_file, fail, out, print_table, settings

dlq_app = typer.Typer(help="The dead-letter queue: events rtem set aside, with the reason. List and show them, "
                           "send them back after a fix (redrive), or delete them (purge).", no_args_is_help=True)

NatsOpt = Annotated[Optional[str], typer.Option(
    "--nats-url", help="The NATS server with the DLQ stream (default: RTEM_NATS_URL, else the embedded server "
                       "of `rtem run` on RTEM_DATA_DIR, from DATA_DIR/nats.url, with rtem's credentials).")]
KindOpt = Annotated[Optional[DeadLetterKind], typer.Option(
    "--kind", help="Only this kind: invalid (not an event), future (dated too far ahead) or failed (the "
                   "handler failed on every delivery).")]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", help="Only letters whose reason contains this text "
                                                                  "(any case).")]
SinceOpt = Annotated[Optional[str], typer.Option(
    "--since", help="Only letters dead-lettered at or after this: a time with a zone (2026-01-02T03:04:05Z) or "
                    "an age (30s, 15m, 2h, 7d).")]
SeqsArg = Annotated[Optional[list[int]], typer.Argument(help="DLQ sequence numbers (the `seq` of `rtem dlq list`).",
                                                        show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter (no seqs or filter needed).")]

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_of(text: str | None, now: datetime) -> datetime | None:
    """`--since`: a time with a zone, or an age before `now`; ValueError naming the accepted forms."""
    if not text:
        return None
    age = _AGE.match(text.strip())
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"--since {text!r}: give a time with a zone (2026-01-02T03:04:05Z) or an age (30s, 15m, 2h, 7d)")
    return when


@dlq_app.command("list")
def list_letters(kind: KindOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
                 limit: Annotated[int, typer.Option(min=0, max=100_000, help="At most this many.")] = 100,
                 json_out: JsonOpt = False, nats_url: NatsOpt = None, db: DbOpt = None) -> None:
    """Dead letters, newest first: seq, when, kind, event id, size, reason and the start of the bytes."""
    where = _filter(kind, reason, since)
    total, found = _run(lambda dlq: _count_and_find(dlq, where, limit), nats_url, db)
    if json_out:
        print(json.dumps({"total": total, "dead_letters": [s.model_dump(mode="json") for s in found]}, indent=2))
        return
    print_table([Column("seq"), Column("received"), Column("kind"), Column("event", ident=True), Column("bytes"),
                 Column("reason"), Column("preview")],
                [[str(s.seq), s.received.isoformat(timespec="seconds") if s.received else "-", s.kind,
                  escape(s.event_id or "-"), str(s.size), escape(s.reason), escape(s.preview)] for s in found])
    out.print(f"{len(found)} shown of {total} in the DLQ")


@dlq_app.command("show")
def show(seq: Annotated[int, typer.Argument(min=1, help="The DLQ sequence number.")], json_out: JsonOpt = False,
         nats_url: NatsOpt = None, db: DbOpt = None) -> None:
    """One dead letter in full: its reason, headers and bytes (as UTF-8; other bytes as \\xNN escapes)."""
    letter = _run(lambda dlq: dlq.show(seq), nats_url, db)
    if json_out:
        print(letter.model_dump_json(indent=2))
        return
    out.print(f"[bold]seq {letter.seq}[/] · {letter.kind} · event {escape(letter.event_id or '-')} · "
              f"{letter.size} bytes{' (truncated in the DLQ)' if letter.truncated else ''} · "
              f"received {letter.received.isoformat(timespec='seconds') if letter.received else '-'}")
    out.print(f"reason: {escape(letter.reason)}")
    for name, value in sorted(letter.headers.items()):
        out.print(f"[dim]{escape(name)}: {escape(value)}[/]")
    print(letter.data)


@dlq_app.command("redrive")
def redrive(seqs: SeqsArg = None, kind: KindOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
            everything: AllOpt = False,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Re-check and report; change nothing.")] = False,
            json_out: JsonOpt = False, nats_url: NatsOpt = None, db: DbOpt = None) -> None:
    """Re-check the chosen letters as the consumer would now; send those that pass back to EVENTS and delete them
    from the DLQ. Those that still fail stay, with the reason. Exits 1 when any chosen letter was not redriven."""
    from ..identity import operator

    where = _choose(seqs, kind, reason, since, everything)
    report: RedriveReport = _run(lambda dlq: dlq.redrive(seqs, where, by=operator(), via="cli", dry_run=dry_run),
                                 nats_url, db)
    if json_out:
        print(report.model_dump_json(indent=2))
    else:
        print_table([Column("seq"), Column("event", ident=True), Column("outcome"), Column("reason")],
                    [[str(r.seq), escape(r.event_id or "-"), r.outcome.value.replace("_", " "), escape(r.reason or "")]
                     for r in report.results])
        out.print(", ".join(f"{n} {o.replace('_', ' ')}" for o, n in report.counts.items() if n) or "nothing selected")
    raise typer.Exit(1 if report.counts["still_failing"] or report.counts["missing"] else 0)


@dlq_app.command("purge")
def purge(seqs: SeqsArg = None, kind: KindOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
          everything: AllOpt = False,
          yes: Annotated[bool, typer.Option("--yes", help="Needed with --all: yes, delete every dead letter.")] = False,
          json_out: JsonOpt = False, nats_url: NatsOpt = None, db: DbOpt = None) -> None:
    """Delete dead letters for good: by seq, by filter, or all (with --yes). Letters that arrive meanwhile stay."""
    from ..identity import operator

    where = _choose(seqs, kind, reason, since, everything)
    if everything and not yes:
        fail("--all deletes every dead letter: add --yes to confirm")
    report = _run(lambda dlq: dlq.purge(seqs, where, everything=everything, by=operator(), via="cli"), nats_url, db)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    out.print(f"purged {report.purged} dead letter(s)" + (f"; not in the DLQ: {', '.join(map(str, report.missing))}"
                                                          if report.missing else ""))


def _filter(kind, reason, since) -> DlqFilter:
    try:
        return DlqFilter(kind=kind, reason=reason or None, since=since_of(since, datetime.now(timezone.utc)))
    except ValueError as exc:
        fail(str(exc))


def _choose(seqs, kind, reason, since, everything: bool) -> DlqFilter:
    """The filter, after checking that exactly one way of choosing was given."""
    where = _filter(kind, reason, since)
    if sum([bool(seqs), not where.empty, everything]) != 1:
        fail("choose the dead letters one way: seqs, a filter (--kind, --reason, --since), or --all")
    return where


async def _count_and_find(dlq: DeadLetterQueue, where: DlqFilter, limit: int) -> tuple[int, Any]:
    return await dlq.count(), await dlq.find(where, limit)


def _run(operation, nats_url: str | None, db: str | None):
    """Connect to the service's bus, open its audit log, run `operation(dlq)`; exits with what failed."""
    from bus import Bus

    from ..audit import AuditLog
    from ._incidents import _service_nats

    cfg = settings()
    url, auth = (nats_url, None) if nats_url else _service_nats(database_target(db))
    if not url:
        fail("no NATS server: set RTEM_NATS_URL, pass --nats-url, or start `rtem run` on this RTEM_DATA_DIR first")
    target = db_file(db, "no audit log here (is `rtem run` using another RTEM_DATA_DIR? pass --db)")
    bus_settings = cfg.bus_settings() if auth is None else replace(cfg.bus_settings(), auth=auth)

    async def run():
        logging.getLogger("nats").setLevel(logging.CRITICAL)  # one line below says what failed instead
        bus = await Bus.connect(url, bus_settings, name="rtem-dlq", give_up_s=CONNECT_WAIT_S)
        try:
            with AuditLog(target) as audit:
                return await operation(DeadLetterQueue(bus, audit, max_event_bytes=cfg.max_event_bytes))
        finally:
            await bus.close()

    try:
        return asyncio.run(run())
    except DlqError as exc:
        fail(str(exc), 1)
    except Exception as exc:  # noqa: BLE001 - a person reads this: where, and what to check
        fail(f"cannot work on the DLQ at {url}: {type(exc).__name__}: {str(exc) or 'no answer'} (is "
             "`rtem run` running? pass --nats-url, or set RTEM_NATS_URL and its credentials)", 1)
