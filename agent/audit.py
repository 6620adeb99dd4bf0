"""The audit log: every decision as an append-only, hash-chained record in SQLite.

``hash = sha256(prev_hash + canonical_json(record without hash))``, chained from 64 zeros. Triggers refuse
UPDATE and DELETE; the one-row ``audit_head`` table, moved by a trigger on each insert, anchors the tail.

``verify`` reports: a record edited in place as ``changed``; edited and re-hashed as ``chain_broken`` at the
next seq (or at the head); removed records, the tail included, as ``deleted``; records moved up to
``_MOVE_WINDOW`` places as ``reordered``. It cannot catch someone who drops the triggers and deletes or rewrites
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

from agent.files import private_file
from agent.models import DecisionRecord

__all__ = ["AuditCopy", "AuditLog", "CopyCheck", "Problem", "VerifyReport", "record_hash", "verify_file", "GENESIS",
           "PURGED_KIND"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
Sink = Callable[[DecisionRecord], None]

_JSON_FIELDS = ("inputs", "decision", "reasons", "evidence", "versions")
_COLUMNS = ("seq", "at", "incident_id", "kind", "node", *_JSON_FIELDS, "prev_hash", "hash")
_MOVE_WINDOW = 16
_BUSY_TIMEOUT_S = 30.0  # other rtem processes may hold the write lock while they append
PURGED_KIND = "retention.purged"

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


class Problem(BaseModel):
    seq: int
    kind: Literal["changed", "deleted", "reordered", "chain_broken", "not_in_log", "not_in_copy", "differs"]
    detail: str


class CopyCheck(BaseModel):
    """What the comparison with the AUDIT stream's copy saw (the problems are in the report's list)."""

    source: str = ""      # where the copy came from (the NATS URL)
    records: int          # messages read from the copy
    first_seq: int | None
    last_seq: int | None
    pending: int = 0      # records here newer than the copy's last: not published yet, not a problem
    aged_out: int = 0     # records here older than the copy's first: past the stream's max_age
    purged: int = 0       # records on the copy this log purged (retention), at or below its anchor


class VerifyReport(BaseModel):
    ok: bool
    records: int
    problems: list[Problem]
    omitted: int = 0  # problems found beyond the ones kept, so a rewritten log cannot exhaust memory
    anchor_seq: int = 0  # records up to this seq were purged by retention (`retention.purged`)
    copy_check: CopyCheck | None = None

    def summary(self) -> str:
        purged = f", seq 1–{self.anchor_seq} purged by retention" if self.anchor_seq else ""
        copied = ""
        if self.copy_check is not None:
            c = self.copy_check
            copied = (f"; AUDIT stream copy ({c.source or 'given'}): {c.records} records"
                      + (f", seq {c.first_seq}–{c.last_seq}" if c.records else "")
                      + (f", {c.pending} not yet published" if c.pending else ""))
        if self.ok:
            return f"audit log OK: {self.records} records, hash chain intact{purged}{copied}"
        total = len(self.problems) + self.omitted
        shown = "; ".join(f"seq {p.seq} {p.kind}" for p in self.problems[:5])
        more = f"; {total - 5} more" if total > 5 else ""
        return f"audit log TAMPERED: {total} problem(s) in {self.records} records: {shown}{more}{copied}"


class AuditCopy:
    """A copy of the log kept elsewhere (the AUDIT stream's messages), reduced to seq → hashes so that a
    long log costs little memory. Feed it each message's bytes with `add`, then pass it to `verify_file`."""

    def __init__(self, source: str = "") -> None:
        self.source = source
        self.hashes: dict[int, set[str]] = {}
        self.messages = 0
        self.unreadable: list[str] = []  # one line per message that is not a record sealed by its hash

    def add(self, data: bytes | str | dict[str, Any], where: str = "") -> None:
        """One message; `where` names it in problems (e.g. its stream sequence)."""
        self.messages += 1
        try:
            doc = data if isinstance(data, dict) else json.loads(data)
            record = DecisionRecord.model_validate(doc)
        except (ValueError, TypeError) as exc:
            self.unreadable.append(f"message {where or self.messages} is not an audit record: {str(exc)[:120]}")
            return
        if record_hash(record) != record.hash:
            self.unreadable.append(f"message {where or self.messages} (seq {record.seq}) does not match its own "
                                   "hash: the copy was edited")
        self.hashes.setdefault(record.seq, set()).add(record.hash)


class AuditLog:
    """Append-only decision log; safe to share between threads and between processes on one file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sinks: list[Sink] = []
        self._lock = threading.Lock()
        self._db = Database(sqlite3.connect(private_file(self.path), timeout=_BUSY_TIMEOUT_S,
                                            check_same_thread=False))
        self._db.enable_wal()
        with self._transaction():
            old_delete = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND "
                                          "name = 'audit_no_delete'").fetchone()
            if old_delete and "audit_anchor" not in old_delete[0]:  # before retention: no delete at all
                self._db.execute("DROP TRIGGER audit_no_delete")
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
        self._db["audit"].insert({k: _canonical(v) if k in _JSON_FIELDS else v for k, v in row.items()})
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


def verify_file(path: str | Path, *, max_problems: int = 1000, copy: AuditCopy | None = None) -> VerifyReport:
    """Walk the log at ``path`` by seq, streaming, and report every problem found (up to ``max_problems``);
    with ``copy`` (the AUDIT stream's), also what is missing from either side and what differs."""
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
        anchor = db.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone() \
            if db["audit_anchor"].exists() else None
        anchor_seq, anchor_hash = anchor or (0, GENESIS)
        problems: list[Problem] = []
        omitted = 0

        def report(seq: int, kind: str, detail: str) -> None:
            nonlocal omitted
            if len(problems) < max_problems:
                problems.append(Problem(seq=seq, kind=kind, detail=detail))
            else:
                omitted += 1

        if anchor_seq:
            report_anchor(db, anchor_seq, anchor_hash, report)
        compare = _CopyComparison(copy, anchor_seq, anchor_hash) if copy is not None else None
        count, prev_seq, prev_hash, prev_moved = 0, anchor_seq, anchor_hash, False
        for row in db.query(f"SELECT {', '.join(_COLUMNS)} FROM audit WHERE seq > ? ORDER BY seq", [anchor_seq]):
            count += 1
            if compare:
                compare.local(row["seq"], row["hash"])
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
        check = compare.finish(report) if compare else None
        return VerifyReport(ok=not problems and not omitted, records=count, problems=problems, omitted=omitted,
                            anchor_seq=anchor_seq, copy_check=check)
    finally:
        db.close()


def report_anchor(db: Database, anchor_seq: int, anchor_hash: str, report: Callable[[int, str, str], None]) -> None:
    """A purge anchor must be the one the latest `retention.purged` record names; else records were deleted
    by hand and the anchor moved to hide it."""
    row = db.execute("SELECT seq, decision FROM audit WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                     [PURGED_KIND]).fetchone()
    try:
        named = json.loads(row[1]).get("audit", {}).get("anchor", {}) if row else {}
    except (ValueError, AttributeError):
        named = {}
    if named != {"seq": anchor_seq, "hash": anchor_hash}:
        where = f"the latest {PURGED_KIND} record (seq {row[0]}) names another" if row else f"no {PURGED_KIND} record"
        report(anchor_seq, "deleted", f"seq {_span(1, anchor_seq)} gone behind a purge anchor that {where}: "
                                      "deleted by hand, not by `rtem purge`")


class _CopyComparison:
    """The log's records, as `verify_file` walks them, against a copy's seq → hashes."""

    def __init__(self, copy: AuditCopy, anchor_seq: int, anchor_hash: str) -> None:
        self.copy, self.anchor_seq, self.anchor_hash = copy, anchor_seq, anchor_hash
        self.remaining = {seq: set(hashes) for seq, hashes in copy.hashes.items()}
        self.first = min(copy.hashes, default=None)
        self.last = max(copy.hashes, default=None)
        self.not_in_copy: list[int] = []
        self.differs: list[int] = []
        self.pending = self.aged_out = 0

    def local(self, seq: int, hash_: str) -> None:
        hashes = self.remaining.pop(seq, None)
        if hashes is None:
            if self.last is None or seq > self.last:
                self.pending += 1
            elif seq < self.first:
                self.aged_out += 1
            else:
                self.not_in_copy.append(seq)
        elif hashes != {hash_}:
            self.differs.append(seq)

    def finish(self, report: Callable[[int, str, str], None]) -> CopyCheck:
        purged = [seq for seq in self.remaining if seq <= self.anchor_seq]
        if self.anchor_seq in self.remaining and self.remaining[self.anchor_seq] != {self.anchor_hash}:
            self.differs.insert(0, self.anchor_seq)  # the last purged record was not the one the stream has
        not_in_log = sorted(seq for seq in self.remaining if seq > self.anchor_seq)
        for first, last in _runs(not_in_log):
            report(first, "not_in_log", f"seq {_span(first, last)} on the AUDIT stream but not in this log: "
                                        "deleted here (a truncated tail, with audit_head rewritten?)")
        for first, last in _runs(self.not_in_copy):
            report(first, "not_in_copy", f"seq {_span(first, last)} in this log but missing from the AUDIT stream "
                                         "(between records it has): deleted there, or never published")
        for first, last in _runs(self.differs):
            report(first, "differs", f"seq {_span(first, last)}: the AUDIT stream holds another record under "
                                     "this seq: rewritten here (or there)")
        for line in self.copy.unreadable:
            report(0, "differs", line)
        return CopyCheck(source=self.copy.source, records=self.copy.messages, first_seq=self.first,
                         last_seq=self.last, pending=self.pending, aged_out=self.aged_out, purged=len(purged))


def _runs(seqs: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs of sorted seqs, as (first, last)."""
    first = last = None
    for seq in seqs:
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None:
            yield first, last
        first = last = seq
    if first is not None:
        yield first, last


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
