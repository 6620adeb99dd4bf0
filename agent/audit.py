"""The audit log: every decision as an append-only, hash-chained record in SQLite.

``hash = sha256(prev_hash + canonical_json(record without hash))``, chained from 64 zeros. Triggers refuse
UPDATE and DELETE; the one-row ``audit_head`` table, moved by a trigger on each insert, anchors the tail.

``verify`` reports: a record edited in place as ``changed``; edited and re-hashed as ``chain_broken`` at the
next seq (or at the head); removed records, the tail included, as ``deleted``; records moved up to
``_MOVE_WINDOW`` places as ``reordered``. It cannot catch someone who drops the triggers and rewrites a whole
suffix, re-hashing it and the head: only a copy kept elsewhere (the JetStream ``AUDIT`` stream, a published
head hash) exposes that, by comparison with ``last().hash``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, time, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel
from sqlite_utils import Database

from agent.models import DecisionRecord

__all__ = ["AuditLog", "Problem", "VerifyReport", "record_hash", "verify_file", "GENESIS"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
Sink = Callable[[DecisionRecord], None]

_JSON_FIELDS = ("inputs", "decision", "reasons", "evidence", "versions")
_COLUMNS = ("seq", "at", "incident_id", "kind", "node", *_JSON_FIELDS, "prev_hash", "hash")
_MOVE_WINDOW = 16
_BUSY_TIMEOUT_S = 30.0  # other rtem processes may hold the write lock while they append

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
                                       hash TEXT NOT NULL);
INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '{genesis}' WHERE NOT EXISTS (SELECT 1 FROM audit_head);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit {refuse}
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit {refuse}
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


class Problem(BaseModel):
    seq: int
    kind: Literal["changed", "deleted", "reordered", "chain_broken"]
    detail: str


class VerifyReport(BaseModel):
    ok: bool
    records: int
    problems: list[Problem]
    omitted: int = 0  # problems found beyond the ones kept, so a rewritten log cannot exhaust memory

    def summary(self) -> str:
        if self.ok:
            return f"audit log OK: {self.records} records, hash chain intact"
        total = len(self.problems) + self.omitted
        shown = "; ".join(f"seq {p.seq} {p.kind}" for p in self.problems[:5])
        more = f"; {total - 5} more" if total > 5 else ""
        return f"audit log TAMPERED: {total} problem(s) in {self.records} records: {shown}{more}"


class AuditLog:
    """Append-only decision log; safe to share between threads and between processes on one file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sinks: list[Sink] = []
        self._lock = threading.Lock()
        self._db = Database(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False))
        self._db.enable_wal()
        with self._transaction():
            self._db["audit"].create({name: int if name == "seq" else str for name in _COLUMNS}, pk="seq",
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
            head = self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                raise RuntimeError(f"{self.path}: audit_head is missing; run `rtem audit verify`")
            fields = {**content, "seq": head[0] + 1, "prev_hash": head[1]}
            row = {**fields, "hash": _seal(fields)}
            self._db["audit"].insert({k: _canonical(v) if k in _JSON_FIELDS else v for k, v in row.items()})
        record = DecisionRecord.model_validate(row)
        # Sinks run outside the lock so one may append in turn; their order across threads is not seq order.
        for sink in list(self.sinks):
            try:
                sink(record)
            except Exception:
                log.exception("audit sink %r failed on seq %d; the record is stored", sink, record.seq)
        return record

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


def verify_file(path: str | Path, *, max_problems: int = 1000) -> VerifyReport:
    """Walk the log at ``path`` by seq, streaming, and report every problem found (up to ``max_problems``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audit database")
    db = Database(sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S))
    try:
        if not db["audit"].exists():
            raise ValueError(f"{path}: no audit table; is this the rtem database?")
        db.execute("BEGIN")  # one snapshot for the head anchor and the walk
        head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone() \
            if db["audit_head"].exists() else None
        problems: list[Problem] = []
        omitted = 0

        def report(seq: int, kind: str, detail: str) -> None:
            nonlocal omitted
            if len(problems) < max_problems:
                problems.append(Problem(seq=seq, kind=kind, detail=detail))
            else:
                omitted += 1

        count, prev_seq, prev_hash, prev_moved = 0, 0, GENESIS, False
        for row in db.query(f"SELECT {', '.join(_COLUMNS)} FROM audit ORDER BY seq"):
            count += 1
            seq, sealed = row["seq"], _sealed_seq(row)
            if seq > prev_seq + 1:
                report(prev_seq + 1, "deleted", f"seq {_span(prev_seq + 1, seq - 1)} missing")
            elif sealed == seq and not prev_moved and row["prev_hash"] != prev_hash:
                report(seq, "chain_broken", f"prev_hash does not match seq {prev_seq}'s hash: seq {prev_seq} "
                                            f"or this record was rewritten and re-hashed")
            if sealed is None:
                report(seq, "changed", "content does not match its hash")
            elif sealed != seq:
                report(seq, "reordered", f"record sealed as seq {sealed} found at seq {seq}")
            prev_seq, prev_hash, prev_moved = seq, row["hash"], sealed not in (seq, None)

        if head is None:
            report(0, "chain_broken", "audit_head is missing, so a truncated tail would go unnoticed")
        elif head[0] > prev_seq:
            report(prev_seq + 1, "deleted", f"seq {_span(prev_seq + 1, head[0])} missing from the end (head anchor)")
        elif head[0] < prev_seq:
            report(head[0] + 1, "chain_broken", f"seq {_span(head[0] + 1, prev_seq)} written past the head anchor")
        elif head[1] != prev_hash:
            report(prev_seq, "chain_broken", "last record differs from the head anchor: rewritten and re-hashed")
        return VerifyReport(ok=not problems, records=count, problems=problems, omitted=omitted)
    finally:
        db.close()


def record_hash(record: DecisionRecord) -> str:
    """The hash ``record`` should carry; lets a consumer of the AUDIT stream check records on its own."""
    return _seal(record.model_dump(mode="json", exclude={"hash"}))


def _seal(fields: dict[str, Any]) -> str:
    return hashlib.sha256((fields["prev_hash"] + _canonical(fields)).encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sealed_seq(row: dict[str, Any]) -> int | None:
    """The seq this row's hash was computed for: its own if intact, a nearby one if moved, None if changed."""
    try:
        fields = {k: v for k, v in _parsed(row).items() if k != "hash"}
        for offset in range(_MOVE_WINDOW + 1):
            for seq in {row["seq"] - offset, row["seq"] + offset}:
                if seq > 0 and _seal({**fields, "seq": seq}) == row["hash"]:
                    return seq
    except (TypeError, ValueError):  # unparsable JSON or an unhashable value: edited by hand
        pass
    return None


def _record(row: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord.model_validate(_parsed(row))


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in _JSON_FIELDS else v for k, v in row.items()}


def _plain(value: Any) -> Any:
    """Reduce ``value`` to JSON types, so what is hashed is exactly what is stored and read back."""
    return json.loads(json.dumps(value, default=_jsonable, allow_nan=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (date, time, Path, UUID, Decimal)):
        return str(value)  # ISO 8601 for dates and times
    raise TypeError(f"audit values must be JSON-serialisable; got {type(value).__name__}: {value!r:.80}")


def _iso(at: datetime) -> str:
    # Naive times are taken as UTC. The "Z" form is also pydantic's, so record_hash() matches stored hashes.
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    return at.isoformat().replace("+00:00", "Z")


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}–{last}"
