"""The audit log: every decision as an append-only, hash-chained record in SQLite.

``hash = sha256(prev_hash + canonical_json(record without hash))``, chained from 64 zeros. Triggers refuse
UPDATE and DELETE; the one-row ``audit_head`` table, moved by a trigger on each insert, anchors the tail.

``verify`` reports: a record edited in place as ``changed``; edited and re-hashed as ``chain_broken`` at the
next seq (or at the head); removed records, the tail included, as ``deleted``; records moved up to
``MOVE_WINDOW`` places as ``reordered``. It cannot catch someone who drops the triggers and deletes or rewrites
a whole suffix, re-hashing it and moving the head: only a copy kept elsewhere exposes that. Given the JetStream
``AUDIT`` stream's copy (an ``AuditCopy``), ``verify_file`` also names records ``not_in_log`` (on the stream,
gone here), ``not_in_copy`` (here, missing from the stream) and ``differs`` (another record under that seq).

Retention (``purge``) deletes the oldest records only behind an anchor: the one-row ``audit_anchor`` holds the
seq and hash of the last purged record, the chain is verified from it, and the purge's own ``retention.purged``
record, appended in the same transaction, names it. Deletes at or below the anchor are allowed; above it they
are refused. An anchor no ``retention.purged`` record names is reported: records were deleted by hand.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from ..files import private_file
from ..models import DecisionRecord

from ._records import (BUSY_TIMEOUT_S, COLUMNS, GENESIS, JSON_FIELDS, PURGED_KIND, _canonical, _iso, _plain, _record,
                       _seal)
from ._verify import VerifyReport, verify_file

log = logging.getLogger(__name__)

Sink = Callable[[DecisionRecord], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
                                       hash TEXT NOT NULL);
INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '{genesis}' WHERE NOT EXISTS (SELECT 1 FROM audit_head);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit {refuse}
CREATE TABLE IF NOT EXISTS audit_anchor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
                                         hash TEXT NOT NULL);
INSERT INTO audit_anchor (id, seq, hash) SELECT 1, 0, '{genesis}' WHERE NOT EXISTS (SELECT 1 FROM audit_anchor);
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  WHEN OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0) {refuse}
CREATE TRIGGER IF NOT EXISTS audit_anchor_forward_only BEFORE UPDATE ON audit_anchor
  WHEN NEW.id IS NOT OLD.id OR NEW.seq <= OLD.seq OR NEW.seq >= (SELECT seq FROM audit_head)
       OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq) {refuse}
CREATE TRIGGER IF NOT EXISTS audit_anchor_no_delete BEFORE DELETE ON audit_anchor {refuse}
CREATE TRIGGER IF NOT EXISTS audit_anchor_single BEFORE INSERT ON audit_anchor
  WHEN EXISTS (SELECT 1 FROM audit_anchor) {refuse}
CREATE TRIGGER IF NOT EXISTS audit_extends_head BEFORE INSERT ON audit
  WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head) OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head)
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only: a record must extend the chain head'); END;
CREATE TRIGGER IF NOT EXISTS audit_moves_head AFTER INSERT ON audit
  BEGIN UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
  WHEN NEW.id IS NOT OLD.id OR NEW.seq IS NOT OLD.seq + 1
       OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq) {refuse}
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head {refuse}
CREATE TRIGGER IF NOT EXISTS audit_head_single BEFORE INSERT ON audit_head
  WHEN EXISTS (SELECT 1 FROM audit_head) {refuse}
""".format(genesis=GENESIS, refuse="BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;")


class AuditLog:
    """Append-only decision log; safe to share between threads and between processes on one file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sinks: list[Sink] = []
        self._lock = threading.Lock()
        self._db = Database(sqlite3.connect(private_file(self.path), timeout=BUSY_TIMEOUT_S,
                                            check_same_thread=False))
        self._db.enable_wal()
        with self._transaction():
            old_delete = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND "
                                          "name = 'audit_no_delete'").fetchone()
            if old_delete and "audit_anchor" not in old_delete[0]:  # before retention: no delete at all
                self._db.execute("DROP TRIGGER audit_no_delete")
            self._db["audit"].create({name: int if name == "seq" else str for name in COLUMNS}, pk="seq",
                                     not_null={"at", "kind", "prev_hash", "hash"}, if_not_exists=True)
            self._db["audit"].create_index(["incident_id"], "audit_incident_id", if_not_exists=True)
            self._db["audit"].create_index(["kind"], "audit_kind", if_not_exists=True)
            self._db.executescript(_SCHEMA)

    def add_sink(self, fn: Sink) -> None:
        self.sinks.append(fn)

    def append(self, kind: str, *, incident_id: str | None = None, node: str = "", inputs: Any = None,
               decision: Any = None, reasons: Iterable[str] | None = None, evidence: Iterable[str] | None = None,
               versions: Any = None, at: datetime | None = None) -> DecisionRecord:
        content = _plain({
            "at": _iso(at or datetime.now(timezone.utc)), "incident_id": incident_id, "kind": kind, "node": node,
            "inputs": inputs or {}, "decision": decision or {}, "reasons": list(reasons or []),
            "evidence": list(evidence or []), "versions": versions or {},
        })
        # Refuse a bad record before it takes a seq, so nothing half-valid is ever chained.
        DecisionRecord.model_validate({**content, "seq": 0, "prev_hash": "", "hash": ""})
        with self._lock, self._transaction():
            record = self._insert(content)
        self._notify(record)
        return record

    def purgeable(self, before: datetime) -> tuple[int, int]:
        """(how many records, through which seq) `purge(before)` would delete now."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                return self._purgeable(_iso(before))
            finally:
                self._db.execute("ROLLBACK")

    def purge(self, before: datetime, *, inputs: Any = None, decision: dict[str, Any] | None = None,
              reasons: Iterable[str] | None = None, node: str = "retention",
              at: datetime | None = None) -> tuple[int, DecisionRecord]:
        """Delete the oldest records, those written before `before` (never past a younger one), and append
        the `retention.purged` record, in one transaction. Its decision gets `audit: {purged, anchor}`: the
        seq and hash of the last record deleted, from which `verify` walks the chain on. Returns (deleted,
        the record)."""
        with self._lock, self._transaction():
            count, through = self._purgeable(_iso(before))
            anchor = self._anchor()
            if count:
                hashed = self._db.execute("SELECT hash FROM audit WHERE seq = ?", [through]).fetchone()
                anchor = (through, hashed[0])
            content = _plain({
                "at": _iso(at or datetime.now(timezone.utc)), "incident_id": None, "kind": PURGED_KIND,
                "node": node, "inputs": inputs or {},
                "decision": {**(decision or {}), "audit": {"purged": count, "anchor": {"seq": anchor[0],
                                                                                        "hash": anchor[1]}}},
                "reasons": list(reasons or []), "evidence": [], "versions": {},
            })
            record = self._insert(content)  # first: the anchor may not reach the head
            if count:
                self._db.execute("UPDATE audit_anchor SET seq = ?, hash = ? WHERE id = 1", list(anchor))
                self._db.execute("DELETE FROM audit WHERE seq <= ?", [through])
        self._notify(record)
        return count, record

    def anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last record purged; (0, GENESIS) when none was."""
        with self._lock:
            return self._anchor()

    def _anchor(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def _purgeable(self, before: str) -> tuple[int, int]:
        anchor_seq, _ = self._anchor()
        young = self._db.execute("SELECT MIN(seq) FROM audit WHERE seq > ? AND at >= ?",
                                 [anchor_seq, before]).fetchone()[0]
        head = self._db.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
        through = head if young is None else young - 1
        count = self._db.execute("SELECT COUNT(*) FROM audit WHERE seq > ? AND seq <= ?",
                                 [anchor_seq, through]).fetchone()[0]
        return count, (through if count else anchor_seq)

    def _insert(self, content: dict[str, Any]) -> DecisionRecord:
        """Chain `content` onto the head; inside a transaction holding `_lock`."""
        head = self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is None:
            raise RuntimeError(f"{self.path}: audit_head is missing; run `rtem audit verify`")
        fields = {**content, "seq": head[0] + 1, "prev_hash": head[1]}
        row = {**fields, "hash": _seal(fields)}
        self._db["audit"].insert({k: _canonical(v) if k in JSON_FIELDS else v for k, v in row.items()})
        return DecisionRecord.model_validate(row)

    def _notify(self, record: DecisionRecord) -> None:
        # Sinks run outside the lock so one may append in turn; their order across threads is not seq order.
        for sink in list(self.sinks):
            try:
                sink(record)
            except Exception:
                log.exception("audit sink %r failed on seq %d; the record is stored", sink, record.seq)

    def records(self, incident_id: str | None = None, kind: str | None = None, since_seq: int = 0,
                limit: int | None = None) -> list[DecisionRecord]:
        filters = {"seq >": since_seq, "incident_id =": incident_id, "kind =": kind}
        filters = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} ?" for column in filters)
        with self._lock:
            rows = list(self._db["audit"].rows_where(where, list(filters.values()), order_by="seq", limit=limit))
        return [_record(row) for row in rows]

    def last(self) -> DecisionRecord | None:
        with self._lock:
            rows = list(self._db["audit"].rows_where(order_by="seq DESC", limit=1))
        return _record(rows[0]) if rows else None

    def count(self) -> int:
        with self._lock:
            return self._db["audit"].count

    def verify(self) -> VerifyReport:
        return verify_file(self.path)  # its own connection: appends carry on while it walks

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: no other process can slip in between head read and insert.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.rollback()
            raise
