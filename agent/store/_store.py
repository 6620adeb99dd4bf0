"""The incident store: events, incidents and the pipeline's state, on SQLite or PostgreSQL.

Every batch is written in ONE transaction (events, incident updates, detector and correlator
state), and the bus acks only after it commits. A crash before the commit redelivers the batch;
a crash after it redelivers events the store already has, which `known_ids` filters out. So an
event is recorded exactly once however often it arrives.

Each thread has its own connection (agent/db): the event loop writes batches while graph nodes read
on worker threads, and nothing in Python serialises them. The SQL is written once, with the few
fragments where the backends differ taken from the database's `Dialect`. The schema is versioned
(`STORE_SCHEMA`); a writable store migrates its database when it opens, so no query pays for an
index later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bus import Event

from ..db import Database, Dialect, Migration, Schema, adopt
from ._queries import CHANGE, EventQueries
from ._repository import CLOSED_STATUSES
from ._rows import EVENT_COLUMNS, decode_incident, event_from_row, iso

# Written out, not bound as parameters: a partial index serves only queries with the same literal terms.
_ACTIVE = "status NOT IN (" + ", ".join(f"'{s}'" for s in CLOSED_STATUSES) + ")"
# A person's closing wins over the incident's thread, which may still be running: kept as a pipeline_state
# key beside the row, so no schema change is needed (agent/oncall.py, docs/lifecycle.md).
_NOT_CLOSED_BY_PERSON = "NOT EXISTS (SELECT 1 FROM pipeline_state WHERE key=?)"


def _tables(real: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS events (
             id TEXT PRIMARY KEY, ts {real}, time TEXT, type TEXT, subject TEXT, severity TEXT, source TEXT,
             message TEXT, attributes TEXT, incident_id TEXT, signals TEXT, received_at TEXT)""",
        f"""CREATE TABLE IF NOT EXISTS incidents (
             id TEXT PRIMARY KEY, opened_at TEXT, updated_at TEXT, first_ts {real}, last_ts {real}, status TEXT,
             severity TEXT, entities TEXT, detections TEXT, signal_count INTEGER, event_count INTEGER,
             merged_into TEXT, root_causes TEXT, actions TEXT, versions TEXT, diagnosed_at TEXT, mttr_s {real},
             resolution TEXT)""",
        "CREATE TABLE IF NOT EXISTS pipeline_state (key TEXT PRIMARY KEY, value TEXT)",
    )


def _indexes(change: str) -> tuple[str, ...]:
    # Index names are those sqlite-utils gave earlier stores, so reopening one adds no duplicate.
    return (
        "CREATE INDEX IF NOT EXISTS idx_events_incident_id_ts ON events (incident_id, ts)",
        "CREATE INDEX IF NOT EXISTS events_subject_ts ON events (subject, ts)",  # latest_state
        f"CREATE INDEX IF NOT EXISTS events_changes_ts ON events (ts) WHERE {change}",  # change_events
        "CREATE INDEX IF NOT EXISTS idx_incidents_status ON incidents (status)",
        f"CREATE INDEX IF NOT EXISTS incidents_active ON incidents (first_ts, id) WHERE {_ACTIVE}",
    )


STORE_SCHEMA = Schema("store", (
    Migration(1, "events, incidents and the pipeline's state, with their indexes",
              sqlite=_tables("FLOAT") + _indexes(CHANGE["sqlite"]),
              postgres=_tables("DOUBLE PRECISION") + _indexes(CHANGE["postgres"])),
))


def _closed_key(incident_id: str) -> str:
    return f"closed_by_person:{incident_id}"


class IncidentStore(EventQueries):
    """An `IncidentRepository` on a `Database` (agent/db): a SQLite file or PostgreSQL. It writes events and
    incidents and reads incidents back; the evidence queries over events it inherits (`_queries.py`)."""

    def __init__(self, where: Database | str | Path, synchronous: str = "NORMAL", *, readonly: bool = False):
        """`where` is a database already open (the store then shares it and does not close it), a
        `postgresql://` URL or a SQLite file. `readonly` is for readers beside a running service (the
        CLI, the API): it never takes a write lock, and a write raises `ReadOnlyStoreError`."""
        self.db, self._owns_db = adopt(where, STORE_SCHEMA, readonly=readonly, synchronous=synchronous)
        self.readonly = self.db.readonly
        self.dialect: Dialect = self.db.dialect
        self._on_close: list[Callable[[], None]] = []

    @property
    def path(self) -> Path:
        """The SQLite file (the audit log, ledger and tokens sit beside the store in it)."""
        path = getattr(self.db, "path", None)
        if path is None:
            raise AttributeError(f"the store on {self.db.where} has no file path")
        return path

    @property
    def where(self) -> str:
        return self.db.where

    @contextmanager
    def transaction(self):
        """One BEGIN IMMEDIATE transaction on the calling thread's connection; the store's write
        methods called inside it (on this thread) join it."""
        with self.db.write():
            yield self

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the store closes (the action history's connections close with it)."""
        self._on_close.append(callback)

    # -- the hot path -----------------------------------------------------------------------------

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        conn = self.db.connection()
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk).fetchall())
        return known

    def insert_events(self, rows: Iterable[tuple]) -> None:
        marks = ",".join("?" * len(EVENT_COLUMNS))
        with self.db.write() as conn:
            conn.executemany(f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({marks}) "
                             "ON CONFLICT DO NOTHING", rows)

    def attach(self, incident_id: str, event_ids: Iterable[str]) -> int:
        """Give events recorded before their incident existed (a threshold's early events) to it;
        returns how many it took."""
        with self.db.write() as conn:
            cursor = conn.executemany("UPDATE events SET incident_id=? WHERE id=? AND incident_id IS NULL",
                                      [(incident_id, e) for e in event_ids])
        return cursor.rowcount

    def merge(self, absorbed: str, keeper: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE events SET incident_id=? WHERE incident_id=?", [keeper, absorbed])
            conn.execute("""UPDATE incidents SET event_count = event_count +
                              COALESCE((SELECT event_count FROM incidents WHERE id=?), 0) WHERE id=?""",
                         [absorbed, keeper])
            conn.execute("UPDATE incidents SET status='merged', merged_into=? WHERE id=?", [keeper, absorbed])

    def add_events(self, incident_id: str, count: int) -> None:
        """Counted as events arrive, not recounted: a storm's incident would make every batch slower."""
        with self.db.write() as conn:
            conn.execute("UPDATE incidents SET event_count = event_count + ? WHERE id=?", [count, incident_id])

    def upsert_incident(self, state: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute(
                """INSERT INTO incidents (id, opened_at, updated_at, first_ts, last_ts, status, severity, entities,
                                          detections, signal_count, event_count)
                   VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET opened_at=excluded.opened_at, updated_at=excluded.updated_at,
                     first_ts=excluded.first_ts, last_ts=excluded.last_ts, severity=excluded.severity,
                     entities=excluded.entities, detections=excluded.detections,
                     signal_count=excluded.signal_count""",
                [state["id"], iso(state["first_ts"]), iso(state["last_ts"]), state["first_ts"], state["last_ts"],
                 state["severity"], json.dumps(state["entities"]), json.dumps(state["detections"]),
                 state["signals"], 0])

    def save_state(self, key: str, value: Any) -> None:
        with self.db.write() as conn:
            conn.execute("""INSERT INTO pipeline_state (key, value) VALUES (?, ?)
                            ON CONFLICT (key) DO UPDATE SET value = excluded.value""", [key, json.dumps(value)])

    def load_state(self, key: str, default: Any = None) -> Any:
        row = self.db.connection().execute("SELECT value FROM pipeline_state WHERE key=?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    # -- incidents ----------------------------------------------------------------------------------

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM incidents WHERE id=?", [incident_id])
        if not rows:
            rows = self._query("SELECT * FROM incidents WHERE id LIKE ? ORDER BY first_ts", [incident_id + "%"])
            if len(rows) != 1:
                return None
        return decode_incident(rows[0])

    def incidents(self, status: str | None = None, include_merged: bool = False) -> list[dict[str, Any]]:
        where, params = [], []
        if status:
            where.append("status=?")
            params.append(status)
        elif not include_merged:
            where.append("status!='merged'")
        sql = "SELECT * FROM incidents" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY first_ts, id"
        return [decode_incident(r) for r in self._query(sql, params)]

    def active_incidents(self) -> list[dict[str, Any]]:
        """Incidents not in `CLOSED_STATUSES`, by first_ts then id (the partial index `incidents_active`
        holds only these, in this order)."""
        return [decode_incident(r) for r in self._query(
            f"SELECT * FROM incidents WHERE {_ACTIVE} ORDER BY first_ts, id", [])]

    def save_diagnosis(self, incident_id: str, *, status: str, root_causes: list[dict[str, Any]],
                       actions: list[dict[str, Any]], versions: dict[str, str], mttr_s: float | None = None,
                       resolution: str | None = None) -> None:
        """Also a thread's last word; an incident a person closed keeps the person's (see `close_by_person`)."""
        with self.db.write() as conn:
            cursor = conn.execute(
                f"""UPDATE incidents SET status=?, root_causes=?, actions=?, versions=?, diagnosed_at=?, mttr_s=?,
                                        resolution=? WHERE id=? AND {_NOT_CLOSED_BY_PERSON}""",
                [status, json.dumps(root_causes), json.dumps(actions), json.dumps(versions),
                 datetime.now(timezone.utc).isoformat(), mttr_s, resolution, incident_id, _closed_key(incident_id)])
            if cursor.rowcount != 1 and not self._closed_by_person(conn, incident_id):
                raise LookupError(f"save_diagnosis: no incident {incident_id!r} in {self.db.where}")

    def set_status(self, incident_id: str, status: str) -> None:
        with self.db.write() as conn:
            conn.execute(f"UPDATE incidents SET status=? WHERE id=? AND {_NOT_CLOSED_BY_PERSON}",
                         [status, incident_id, _closed_key(incident_id)])

    # -- a person's closing and reopening (agent/oncall.py) ---------------------------------------

    def close_by_person(self, incident_id: str, *, expect_status: str, status: str, actions: list[dict[str, Any]],
                        resolution: str, by: str) -> bool:
        """Close an incident as a person said, if it is still `expect_status` (else False: it moved on).
        From then on the incident's thread cannot change its status, plan or resolution (`save_diagnosis`,
        `set_status` leave it), until `reopen_by_person`."""
        with self.db.write() as conn:
            cursor = conn.execute("UPDATE incidents SET status=?, actions=?, resolution=? WHERE id=? AND status=?",
                                  [status, json.dumps(actions), resolution, incident_id, expect_status])
            if cursor.rowcount != 1:
                return False
            conn.execute("""INSERT INTO pipeline_state (key, value) VALUES (?, ?)
                            ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
                         [_closed_key(incident_id), json.dumps({"by": by, "status": status})])
        return True

    def reopen_by_person(self, incident_id: str, *, expect_status: str) -> bool:
        """Make a closed incident `open` again, if it is still `expect_status` (else False)."""
        with self.db.write() as conn:
            cursor = conn.execute("UPDATE incidents SET status='open', resolution=NULL, mttr_s=NULL "
                                  "WHERE id=? AND status=?", [incident_id, expect_status])
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM pipeline_state WHERE key=?", [_closed_key(incident_id)])
        return True

    def closed_by_person(self, incident_id: str) -> dict[str, Any] | None:
        """Who closed the incident and to what status, if a person did (and nobody reopened it since)."""
        return self.load_state(_closed_key(incident_id))

    def _closed_by_person(self, conn, incident_id: str) -> bool:
        return conn.execute("SELECT 1 FROM pipeline_state WHERE key=?", [_closed_key(incident_id)]).fetchone() \
            is not None

    # -- events -------------------------------------------------------------------------------------

    def events(self, incident_id: str) -> list[Event]:
        return [event_from_row(r) for r in self._query(
            "SELECT * FROM events WHERE incident_id=? ORDER BY ts, id", [incident_id])]

    def event_count(self) -> int:
        """How many events are stored (tests and benchmarks; not part of `IncidentRepository`)."""
        return self.db.connection().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def event_incident_id(self, event_id: str) -> str | None:
        row = self.db.connection().execute("SELECT incident_id FROM events WHERE id=?",
                                                    [event_id]).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        """Close every thread's connection, if the store opened its database (and what registered
        with `on_close`)."""
        callbacks, self._on_close = self._on_close, []
        try:
            for callback in callbacks:
                callback()
        finally:
            if self._owns_db:
                self.db.close()
