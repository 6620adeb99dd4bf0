"""Retention: what `rtem purge` (and `rtem run`, daily) deletes, by age, and the record it leaves.

Three things grow without end, and each is purged on its own terms (docs/retention.md):

- stored events: those of closed incidents, once the incident has been quiet for `retain_events_days`
  (all of its events together, so a report is never half rebuilt), and events of no incident received
  more than `retain_events_days` ago. Incident rows stay: they are small and say what happened.
- graph checkpoints of incidents closed more than `retain_checkpoints_days` ago: a closed incident's
  thread is never resumed. Beside a SQLite store they are in checkpoints.db, a SQLite file; a store on
  PostgreSQL keeps them in the same database, in the tables of langgraph-checkpoint-postgres's saver
  (`checkpoints`, `checkpoint_blobs`, `checkpoint_writes`), and they are purged there. A `checkpoints`
  file passed in is purged instead, whatever the store.
- audit records written more than `retain_audit_days` ago, through `AuditLog.purge`, which keeps the hash
  of the last one deleted as the anchor `rtem audit verify` walks on from, and appends the purge's own
  `retention.purged` record (with every count below) in the same transaction.

Store rows are deleted in batches of up to `BATCH` events (of many incidents at once), each batch its own
short write transaction on the store's connections, so the running service's batches wait at most one
batch for the write lock. Batches are picked by primary key, so the same SQL runs on SQLite and
PostgreSQL. The DLQ and AUDIT
streams expire on their own (their `max_age`, see bus/_streams.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import private_file
from ._repository import CLOSED_STATUSES

if TYPE_CHECKING:
    from ..audit import AuditLog
    from ._store import IncidentStore

__all__ = ["BATCH", "PurgeReport", "RetentionPolicy", "purge"]

BATCH = 5000
_IDS_PER_STATEMENT = 500  # incident ids bound in one statement (old SQLite allows 999 parameters)
Progress = Callable[[str, int], None]
"""Called with (what, rows so far) as a purge goes: "events", "unattached events", "checkpoints"."""

_CLOSED = "(" + ", ".join(f"'{s}'" for s in CLOSED_STATUSES) + ")"
# When a closed incident last changed, wall time: its last diagnosis save (the close), else its newest
# event's arrival. Both are ISO 8601 in UTC, so they compare as text with the cutoff.
_QUIET_SINCE = ("COALESCE(i.diagnosed_at, (SELECT MAX(e.received_at) FROM events e WHERE e.incident_id = i.id), "
                "i.updated_at)")


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of data is kept, in days."""

    events_days: float = 30.0
    checkpoints_days: float = 7.0
    audit_days: float = 400.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        """From `agent.config.Settings` (its `retain_*_days`)."""
        return cls(events_days=settings.retain_events_days, checkpoints_days=settings.retain_checkpoints_days,
                   audit_days=settings.retain_audit_days)


@dataclass
class PurgeReport:
    """What a purge deleted (or, with `dry_run`, would delete)."""

    dry_run: bool
    now: str
    cutoffs: dict[str, str]                    # kind → ISO time before which it goes
    incidents: int = 0                         # closed incidents whose events went
    events: int = 0                            # their events
    unattached_events: int = 0                 # events of no incident
    checkpoint_threads: int = 0                # closed incidents whose checkpoints went
    checkpoints: int = 0                       # checkpoint and pending-write rows (not PostgreSQL's blobs)
    audit_records: int = 0
    audit_anchor: dict[str, Any] = field(default_factory=dict)  # {seq, hash} verify walks on from
    audit_seq: int | None = None               # the retention.purged record

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        return {"incidents": self.incidents, "events": self.events, "unattached_events": self.unattached_events,
                "checkpoint_threads": self.checkpoint_threads, "checkpoints": self.checkpoints,
                "audit_records": self.audit_records}


def purge(store: IncidentStore, audit: AuditLog, policy: RetentionPolicy, *,
          checkpoints: Path | None = None, now: datetime | None = None, dry_run: bool = False,
          actor: str = "rtem", progress: Progress | None = None) -> PurgeReport:
    """Delete what `policy` no longer keeps from the store, the graph's checkpoints (`checkpoints`, a
    checkpoints.db; None: the file beside a SQLite store, or the saver's tables in a PostgreSQL store's
    own database) and the audit log, then record it as `retention.purged` (also when nothing went: the
    record says a purge ran). With `dry_run`, count only and record nothing. `actor` names who purged
    (`rtem run`, or the user@host of `rtem purge`).
    Blocking: the service runs it in a thread."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    cutoff = {"events": now - timedelta(days=policy.events_days),
              "checkpoints": now - timedelta(days=policy.checkpoints_days),
              "audit": now - timedelta(days=policy.audit_days)}
    report = PurgeReport(dry_run=dry_run, now=now.isoformat(), cutoffs={k: v.isoformat() for k, v in cutoff.items()})
    tick = progress or (lambda _what, _n: None)

    incidents = _quiet_incidents(store, cutoff["events"])
    report.incidents = len(incidents)
    report.events = _delete_events(store, incidents, dry_run, lambda n: tick("events", n))
    report.unattached_events = _delete_batches(
        store, "incident_id IS NULL AND received_at < ?", [cutoff["events"].isoformat()], dry_run,
        lambda n: tick("unattached events", n))

    checkpoints = checkpoints or _checkpoints_beside(store)
    if checkpoints is not None or store.db.dialect.name == "postgres":
        threads = _quiet_incidents(store, cutoff["checkpoints"])
        delete = (partial(_delete_checkpoints, checkpoints) if checkpoints is not None
                  else partial(_delete_postgres_checkpoints, store))
        report.checkpoint_threads, report.checkpoints = delete(threads, dry_run, lambda n: tick("checkpoints", n))

    if dry_run:
        report.audit_records, through = audit.purgeable(cutoff["audit"])
        report.audit_anchor = {"seq": through}  # where the anchor would move
        return report
    counts = report.counts()
    del counts["audit_records"]
    purged, record = audit.purge(
        cutoff["audit"], at=now, inputs={"policy": asdict(policy), "cutoffs": report.cutoffs, "by": actor},
        decision=counts,
        reasons=[f"retention: {report.events} events of {report.incidents} closed incidents and "
                 f"{report.unattached_events} events of none, checkpoints of {report.checkpoint_threads} closed "
                 f"incidents, and the audit records written before {cutoff['audit'].date()} purged by {actor}"])
    report.audit_records = purged
    report.audit_anchor = record.decision["audit"]["anchor"]
    report.audit_seq = record.seq
    return report


def _quiet_incidents(store: IncidentStore, before: datetime) -> list[str]:
    """Closed incidents whose last change was before `before` (merged ones too: their events moved on)."""
    rows = store.db.connection().execute(
        f"SELECT i.id FROM incidents i WHERE i.status IN {_CLOSED} AND {_QUIET_SINCE} < ? ORDER BY i.id",
        [before.isoformat()]).fetchall()
    return [row[0] for row in rows]


def _delete_events(store: IncidentStore, incidents: list[str], dry_run: bool,
                   progress: Callable[[int], None]) -> int:
    """Delete the events of `incidents`, a batch spanning as many of them as it holds. The incidents
    were chosen before the first batch: a batch must not change which incidents are quiet (with no
    diagnosis, an incident's quiet time is its newest event's), or one could lose half its events."""
    total = 0
    for start in range(0, len(incidents), _IDS_PER_STATEMENT):
        chunk = incidents[start:start + _IDS_PER_STATEMENT]
        total += _delete_batches(store, f"incident_id IN ({','.join('?' * len(chunk))})", chunk, dry_run,
                                 lambda n, done=total: progress(done + n))
    return total


def _delete_batches(store: IncidentStore, where: str, params: list[Any], dry_run: bool,
                    progress: Callable[[int], None]) -> int:
    """Delete the events matching `where`, BATCH at a time, each batch one write transaction."""
    if dry_run:
        return store.db.connection().execute(f"SELECT COUNT(*) FROM events WHERE {where}", params).fetchone()[0]
    total = 0
    while True:
        with store.db.write() as conn:
            deleted = conn.execute(f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {where} "
                                   f"LIMIT {BATCH})", params).rowcount
        total += deleted
        if deleted:
            progress(total)
        if deleted < BATCH:
            return total


def _checkpoints_beside(store: IncidentStore) -> Path | None:
    """checkpoints.db beside a SQLite store; None for a store on PostgreSQL, which has no file beside it."""
    path = getattr(store.db, "path", None)
    return path.with_name("checkpoints.db") if path is not None else None


def _delete_checkpoints(path: Path, threads: list[str], dry_run: bool,
                        progress: Callable[[int], None]) -> tuple[int, int]:
    """(threads that had checkpoints, rows deleted) in LangGraph's `checkpoints` and `writes` tables."""
    if not threads or not path.is_file():
        return 0, 0
    conn = sqlite3.connect(private_file(path), timeout=30.0, isolation_level=None)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables &= {"checkpoints", "writes"}
        if not tables:
            return 0, 0
        had, rows = 0, 0
        for start in range(0, len(threads), _IDS_PER_STATEMENT):
            chunk = threads[start:start + _IDS_PER_STATEMENT]
            marks = ",".join("?" * len(chunk))
            if "checkpoints" in tables:
                had += conn.execute(f"SELECT COUNT(DISTINCT thread_id) FROM checkpoints WHERE thread_id IN ({marks})",
                                    chunk).fetchone()[0]
            for table in sorted(tables):
                if dry_run:
                    rows += conn.execute(f"SELECT COUNT(*) FROM {table} WHERE thread_id IN ({marks})",
                                         chunk).fetchone()[0]
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows += conn.execute(f"DELETE FROM {table} WHERE thread_id IN ({marks})", chunk).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            progress(rows)
        return had, rows
    finally:
        conn.close()


# The tables langgraph-checkpoint-postgres's saver makes (its `setup()`, run by IncidentGraph.open): a
# checkpoint's row, the blobs of its channel values, and the pending writes of its tasks.
_PG_CHECKPOINTS, _PG_COUNTED = "checkpoints", ("checkpoints", "checkpoint_writes")


def _delete_postgres_checkpoints(store: IncidentStore, threads: list[str], dry_run: bool,
                                 progress: Callable[[int], None]) -> tuple[int, int]:
    """(threads that had checkpoints, checkpoint and pending-write rows deleted) in the saver's tables in
    the store's PostgreSQL database (the graph of a store on PostgreSQL keeps its checkpoints there, under
    the same search_path: agent/service.py). A thread is an incident: its id is the thread_id.

    The rows are counted with SQL on the saver's tables (its API deletes but does not count; the blobs of
    channel values, which SQLite's saver keeps inside the checkpoint row, are not counted), and deleted by
    the saver itself, `prune(..., strategy="delete")`: every checkpoint, blob and pending write of a chunk
    of threads, in one transaction. Threads of closed incidents are never written to again, so the
    counts taken just before are what goes."""
    conn = store.db.connection()
    if not threads or conn.execute("SELECT to_regclass(?)", [_PG_CHECKPOINTS]).fetchone()[0] is None:
        return 0, 0  # no graph has run on this database: its saver never made its tables
    with contextlib.ExitStack() as stack:
        saver = None
        if not dry_run:
            from langgraph.checkpoint.postgres import PostgresSaver

            saver = stack.enter_context(PostgresSaver.from_conn_string(str(store.db.target)))
        had, rows = 0, 0
        for start in range(0, len(threads), _IDS_PER_STATEMENT):
            chunk = threads[start:start + _IDS_PER_STATEMENT]
            marks = ",".join("?" * len(chunk))
            where = f"WHERE thread_id IN ({marks})"
            had += conn.execute(f"SELECT COUNT(DISTINCT thread_id) FROM {_PG_CHECKPOINTS} {where}", chunk).fetchone()[0]
            rows += sum(conn.execute(f"SELECT COUNT(*) FROM {table} {where}", chunk).fetchone()[0]
                        for table in _PG_COUNTED)
            if saver is not None:
                saver.prune(chunk, strategy="delete")
            progress(rows)
        return had, rows
