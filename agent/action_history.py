"""The action history: every action the guard let through, in SQLite, so rate limits survive restarts.

Guardrail limits and caps ("at most 2 restarts of one instance per hour", rules/_gates.py) count
earlier actions. They read them from the table `action_history` in rtem.db through the `ActionHistory`
protocol the guard defines. The graph's guard node records each allowed action (keyed, so a re-run of
the same decision is not counted twice); an executor that runs an approved action records it the same
way. Times are event times, like everything the guard judges.

Each row has a `seq`; a verdict's decision record keeps the highest seq the guard could see, so
`rtem rules replay` judges a past proposal against exactly the history it had (`as_of(seq)`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path

from .db import SqliteDatabase
from .store import IncidentStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS action_history (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         key TEXT UNIQUE,
         ts REAL NOT NULL,
         at TEXT NOT NULL,
         action TEXT NOT NULL,
         target TEXT NOT NULL,
         incident_id TEXT,
         recorded_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS action_history_action_ts ON action_history (action, ts)",
)


class SqliteActionHistory:
    """An ActionHistory over `action_history` in rtem.db.

    It has its own connections (one per thread, like the store's), never the store's: a guard on a
    worker thread records while the event loop writes a batch, and SQLite orders the two writes.
    Built on a store it opens the store's file the same way (read-only too, if the store is) and
    closes with it; built on a path it opens that file and `close()` closes it.

    A thread must not record while it holds the store's `transaction()` open: the record waits for
    that transaction's write lock, which its own thread holds.
    """

    def __init__(self, where: IncidentStore | str | Path):
        self._until_seq: int | None = None  # a view made by as_of() reads only rows up to this seq
        self._before_ts: float | None = None
        self._not_of: str | None = None  # a view made by excluding() leaves out this incident's rows
        if isinstance(where, IncidentStore):
            self._conns = SqliteDatabase(where.path, synchronous=where.db.synchronous, readonly=where.readonly,
                                         busy_timeout_s=where.db.busy_timeout_s)
            where.on_close(self.close)
        else:
            self._conns = SqliteDatabase(where)
        self._own = True
        if not self._conns.readonly:
            with self._conns.write() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)

    def record(self, action: str, target: str, at: datetime, *, incident_id: str | None = None,
               key: str | None = None) -> bool:
        """Record one action at event time `at`; False when `key` was already recorded."""
        at = at.astimezone(timezone.utc)
        with self._conns.write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO action_history (key, ts, at, action, target, incident_id, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, at.timestamp(), at.isoformat().replace("+00:00", "Z"), action, target, incident_id,
                 datetime.now(timezone.utc).isoformat()])
        return cursor.rowcount == 1

    def count(self, action: str, *, since: datetime, until: datetime,
              targets: Collection[str] | None = None) -> int:
        sql, params = self._window(action, since, until, targets)
        return self._read(f"SELECT COUNT(*) FROM action_history WHERE {sql}", params)[0][0]

    def targets(self, action: str, *, since: datetime, until: datetime, among: Collection[str]) -> set[str]:
        sql, params = self._window(action, since, until, among)
        return {row[0] for row in self._read(f"SELECT DISTINCT target FROM action_history WHERE {sql}", params)}

    def watermark(self) -> int:
        """The highest seq recorded so far (0 when empty): what a verdict's record keeps for replay."""
        return self._read("SELECT COALESCE(MAX(seq), 0) FROM action_history", [])[0][0]

    def as_of(self, seq: int | None = None, *, before: datetime | None = None) -> SqliteActionHistory:
        """A read-only view of the history as it was: rows up to `seq`, or (for records without one)
        strictly before event time `before`."""
        view = object.__new__(SqliteActionHistory)
        view.__dict__.update(self.__dict__)
        view._until_seq, view._own = seq, False
        view._before_ts = before.timestamp() if before is not None and seq is None else None
        return view

    def excluding(self, incident_id: str) -> SqliteActionHistory:
        """A read-only view without the actions of `incident_id`: an incident judged again (its thread
        re-run after a crash) is not held back by the actions it was itself allowed the first time."""
        view = object.__new__(SqliteActionHistory)
        view.__dict__.update(self.__dict__)
        view._not_of, view._own = incident_id, False
        return view

    def __len__(self) -> int:
        if self._until_seq is not None:
            return self._read("SELECT COUNT(*) FROM action_history WHERE seq<=?", [self._until_seq])[0][0]
        return self._read("SELECT COUNT(*) FROM action_history", [])[0][0]

    def close(self) -> None:
        if self._own:
            self._conns.close()

    def _window(self, action: str, since: datetime, until: datetime, targets: Collection[str] | None):
        sql = "action=? AND ts>? AND ts<=?"
        params: list = [action, since.timestamp(), until.timestamp()]
        if self._until_seq is not None:
            sql += " AND seq<=?"
            params.append(self._until_seq)
        if self._before_ts is not None:
            sql += " AND ts<?"
            params.append(self._before_ts)
        if self._not_of is not None:
            sql += " AND incident_id IS NOT ?"
            params.append(self._not_of)
        if targets is not None:
            names = list(targets)
            if not names:
                return "0", []
            sql += f" AND target IN ({','.join('?' * len(names))})"
            params.extend(names)
        return sql, params

    def _read(self, sql: str, params: list) -> list[tuple]:
        return self._conns.connection().execute(sql, params).fetchall()
