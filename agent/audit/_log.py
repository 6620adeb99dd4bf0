"""The audit log: every decision as an append-only, hash-chained record, in SQLite or PostgreSQL (agent/db).

``hash = sha256(prev_hash + canonical_json(record without hash))``, chained from 64 zeros. Triggers refuse
UPDATE and DELETE; the one-row ``audit_head`` table, moved by a trigger on each insert, anchors the tail
(`_schema.py` has the rules, for both backends).

Appends are serialised in the database, not in Python: each one's transaction takes the head first (SQLite's
``BEGIN IMMEDIATE`` holds the write lock; on PostgreSQL ``SELECT … FOR UPDATE`` locks the head row), reads its
seq and hash there, and inserts the record sealed on them. Nothing about the head is kept in memory, so any
number of threads, ``AuditLog`` instances and worker processes extend one chain.

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

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..db import Connection, Database, adopt, dict_rows
from ..models import DecisionRecord

from ._records import COLUMNS, GENESIS, JSON_FIELDS, PURGED_KIND, _canonical, _iso, _plain, _record, _seal
from ._schema import AUDIT_SCHEMA
from ._verify import VerifyReport, verify_file

log = logging.getLogger(__name__)

Sink = Callable[[DecisionRecord], None]

_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit"
_INSERT = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class AuditLog:
    """Append-only decision log; safe to share between threads, and one chain however many instances and
    processes append to the same database."""

    def __init__(self, where: Database | str | Path) -> None:
        """`where` is a database already open (the log then shares it and does not close it), a
        `postgresql://` URL or a SQLite file. An append inside a write transaction the calling thread has
        open on a shared database joins it: the record commits with it, and holds the head until then."""
        # FULL on a file of its own, as before the shared layer: an appended record survives a power loss.
        self.db, self._owns_db = adopt(where, AUDIT_SCHEMA, synchronous="FULL")
        self.sinks: list[Sink] = []
        # SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks the head row.
        self._take_head = _HEAD + (" FOR UPDATE" if self.db.dialect.name == "postgres" else "")

    @property
    def where(self) -> str:
        """The database, for messages: a file path, or a URL without its password."""
        return self.db.where

    @property
    def path(self) -> Path:
        """The SQLite file the log is in."""
        path = getattr(self.db, "path", None)
        if path is None:
            raise AttributeError(f"the audit log on {self.db.where} has no file path")
        return path

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
        with self.db.write() as conn:
            record = self._insert(conn, content, self._head(conn))
        self._notify(record)
        return record

    def purgeable(self, before: datetime) -> tuple[int, int]:
        """(how many records, through which seq) `purge(before)` would delete now."""
        with self.db.snapshot() as conn:
            return self._purgeable(conn, _iso(before))

    def purge(self, before: datetime, *, inputs: Any = None, decision: dict[str, Any] | None = None,
              reasons: Iterable[str] | None = None, node: str = "retention",
              at: datetime | None = None) -> tuple[int, DecisionRecord]:
        """Delete the oldest records, those written before `before` (never past a younger one), and append
        the `retention.purged` record, in one transaction. Its decision gets `audit: {purged, anchor}`: the
        seq and hash of the last record deleted, from which `verify` walks the chain on. Returns (deleted,
        the record)."""
        with self.db.write() as conn:
            head = self._head(conn)  # first: a concurrent purge or append waits for this one
            count, through = self._purgeable(conn, _iso(before))
            anchor = self._anchor(conn)
            if count:
                hashed = conn.execute("SELECT hash FROM audit WHERE seq = ?", [through]).fetchone()
                anchor = (through, hashed[0])
            content = _plain({
                "at": _iso(at or datetime.now(timezone.utc)), "incident_id": None, "kind": PURGED_KIND,
                "node": node, "inputs": inputs or {},
                "decision": {**(decision or {}), "audit": {"purged": count, "anchor": {"seq": anchor[0],
                                                                                        "hash": anchor[1]}}},
                "reasons": list(reasons or []), "evidence": [], "versions": {},
            })
            record = self._insert(conn, content, head)  # first: the anchor may not reach the head
            if count:
                conn.execute("UPDATE audit_anchor SET seq = ?, hash = ? WHERE id = 1", list(anchor))
                conn.execute("DELETE FROM audit WHERE seq <= ?", [through])
        self._notify(record)
        return count, record

    def anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last record purged; (0, GENESIS) when none was."""
        return self._anchor(self.db.connection())

    def records(self, incident_id: str | None = None, kind: str | None = None, since_seq: int = 0,
                limit: int | None = None) -> list[DecisionRecord]:
        filters = {"seq >": since_seq, "incident_id =": incident_id, "kind =": kind}
        filters = {column: value for column, value in filters.items() if value is not None}
        sql = f"{_SELECT} WHERE {' AND '.join(f'{column} ?' for column in filters)} ORDER BY seq"
        params = list(filters.values())
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_record(row) for row in dict_rows(self.db.connection().execute(sql, params))]

    def last(self) -> DecisionRecord | None:
        rows = dict_rows(self.db.connection().execute(f"{_SELECT} ORDER BY seq DESC LIMIT 1"))
        return _record(rows[0]) if rows else None

    def count(self) -> int:
        return self.db.connection().execute("SELECT COUNT(*) FROM audit").fetchone()[0]

    def verify(self) -> VerifyReport:
        return verify_file(self.db)  # one snapshot on this thread's connection: appends carry on meanwhile

    def close(self) -> None:
        """Close the database's connections, if the log opened it."""
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _head(self, conn: Connection) -> tuple[int, str]:
        """The head's (seq, hash), held until the write transaction `conn` is in ends."""
        head = conn.execute(self._take_head).fetchone()
        if head is None:
            raise RuntimeError(f"{self.db.where}: audit_head is missing; run `rtem audit verify`")
        return head[0], head[1]

    def _insert(self, conn: Connection, content: dict[str, Any], head: tuple[int, str]) -> DecisionRecord:
        """Chain `content` onto `head`, which this transaction holds."""
        fields = {**content, "seq": head[0] + 1, "prev_hash": head[1]}
        row = {**fields, "hash": _seal(fields)}
        conn.execute(_INSERT, [_canonical(row[k]) if k in JSON_FIELDS else row[k] for k in COLUMNS])
        return DecisionRecord.model_validate(row)

    def _anchor(self, conn: Connection) -> tuple[int, str]:
        row = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def _purgeable(self, conn: Connection, before: str) -> tuple[int, int]:
        anchor_seq, _ = self._anchor(conn)
        young = conn.execute("SELECT MIN(seq) FROM audit WHERE seq > ? AND at >= ?", [anchor_seq, before]).fetchone()[0]
        head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
        through = head if young is None else young - 1
        count = conn.execute("SELECT COUNT(*) FROM audit WHERE seq > ? AND seq <= ?",
                             [anchor_seq, through]).fetchone()[0]
        return count, (through if count else anchor_seq)

    def _notify(self, record: DecisionRecord) -> None:
        # Sinks run outside the transaction, so one may append in turn; their order across threads is not seq
        # order. (After the commit, unless the append joined a transaction the caller still has open.)
        for sink in list(self.sinks):
            try:
                sink(record)
            except Exception:
                log.exception("audit sink %r failed on seq %d; the record is stored", sink, record.seq)
