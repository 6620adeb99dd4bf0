"""`verify_file`: walk the log by seq and report what was changed, deleted or reordered, and, given the
AUDIT stream's copy, what is missing from either side or differs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ..db import Connection, Database, check, dict_rows, is_postgres_url, open_database
from ..models import DecisionRecord

from ._records import COLUMNS, GENESIS, PURGED_KIND, _sealed_seq, _span, record_hash
from ._schema import AUDIT_SCHEMA


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


def verify_file(where: Database | str | Path, *, max_problems: int = 1000,
                copy: AuditCopy | None = None) -> VerifyReport:
    """Walk the log in `where` (a database open already, a `postgresql://` URL or a SQLite file) by seq, a
    page at a time in one snapshot, and report every problem found (up to ``max_problems``); with ``copy``
    (the AUDIT stream's), also what is missing from either side and what differs."""
    if isinstance(where, Database):
        return _verify(where, max_problems, copy)
    db = _open(where)
    try:
        return _verify(db, max_problems, copy)
    finally:
        db.close()


def report_anchor(conn: Connection, anchor_seq: int, anchor_hash: str,
                  report: Callable[[int, str, str], None]) -> None:
    """A purge anchor must be the one the latest `retention.purged` record names; else records were deleted
    by hand and the anchor moved to hide it."""
    row = conn.execute("SELECT seq, decision FROM audit WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                       [PURGED_KIND]).fetchone()
    try:
        named = json.loads(row[1]).get("audit", {}).get("anchor", {}) if row else {}
    except (ValueError, AttributeError):
        named = {}
    if named != {"seq": anchor_seq, "hash": anchor_hash}:
        where = f"the latest {PURGED_KIND} record (seq {row[0]}) names another" if row else f"no {PURGED_KIND} record"
        report(anchor_seq, "deleted", f"seq {_span(1, anchor_seq)} gone behind a purge anchor that {where}: "
                                      "deleted by hand, not by `rtem purge`")


def _open(where: str | Path) -> Database:
    """The database at `where`, read-only: verifying writes nothing."""
    if not is_postgres_url(where):
        where = Path(where)
        if not where.is_file():
            raise FileNotFoundError(f"{where}: no such audit database")
    return open_database(where, readonly=True)


def _verify(db: Database, max_problems: int, copy: AuditCopy | None) -> VerifyReport:
    check(db, [AUDIT_SCHEMA])  # a log laid out by a newer rtem would be misread
    with db.snapshot() as conn:  # the head, the anchor and the walk all see one commit
        if not _exists(conn, db, "audit"):
            raise ValueError(f"{db.where}: no audit table; is this the rtem database?")
        head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone() \
            if _exists(conn, db, "audit_head") else None
        anchor = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone() \
            if _exists(conn, db, "audit_anchor") else None
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
            report_anchor(conn, anchor_seq, anchor_hash, report)
        compare = _CopyComparison(copy, anchor_seq, anchor_hash) if copy is not None else None
        count, prev_seq, prev_hash, prev_moved = 0, anchor_seq, anchor_hash, False
        for row in _records_after(conn, anchor_seq):
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
    check_copy = compare.finish(report) if compare else None
    return VerifyReport(ok=not problems and not omitted, records=count, problems=problems, omitted=omitted,
                        anchor_seq=anchor_seq, copy_check=check_copy)


_EXISTS = {"sqlite": "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)",
           "postgres": "SELECT to_regclass(?) IS NOT NULL"}


def _exists(conn: Connection, db: Database, table: str) -> bool:
    return bool(conn.execute(_EXISTS[db.dialect.name], [table]).fetchone()[0])


def _records_after(conn: Connection, seq: int, page: int = 1000) -> Iterator[dict[str, Any]]:
    """The rows after `seq`, in seq order, a page at a time: a long log never sits in memory whole."""
    while True:
        rows = dict_rows(conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                                      [seq, page]))
        yield from rows
        if len(rows) < page:
            return
        seq = rows[-1]["seq"]


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
