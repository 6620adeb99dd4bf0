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

from bus import Event, parse_time

from ..db import Database, Dialect, Migration, Schema, adopt, dict_rows
from ._repository import CLOSED_STATUSES
from ._rows import EVENT_COLUMNS, decode_incident, event_from_row, iso

# Written out, not bound as parameters: a partial index serves only queries with the same literal terms.
_ACTIVE = "status NOT IN (" + ", ".join(f"'{s}'" for s in CLOSED_STATUSES) + ")"
_ERROR = "(signals IS NOT NULL OR severity IN ('error','critical'))"
# A person's closing wins over the incident's thread, which may still be running: kept as a pipeline_state
# key beside the row, so no schema change is needed (agent/oncall.py, docs/lifecycle.md).
_NOT_CLOSED_BY_PERSON = "NOT EXISTS (SELECT 1 FROM pipeline_state WHERE key=?)"
_CHANGE = {"sqlite": "type GLOB 'rtem.change.*'", "postgres": "type LIKE 'rtem.change.%'"}


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
              sqlite=_tables("FLOAT") + _indexes(_CHANGE["sqlite"]),
              postgres=_tables("DOUBLE PRECISION") + _indexes(_CHANGE["postgres"])),
))


def _closed_key(incident_id: str) -> str:
    return f"closed_by_person:{incident_id}"


class IncidentStore:
    """An `IncidentRepository` on a `Database` (agent/db): a SQLite file or PostgreSQL."""

    def __init__(self, where: Database | str | Path, synchronous: str = "NORMAL", *, readonly: bool = False):
        """`where` is a database already open (the store then shares it and does not close it), a
        `postgresql://` URL or a SQLite file. `readonly` is for readers beside a running service (the
        CLI, the API): it never takes a write lock, and a write raises `ReadOnlyStoreError`."""
        self.db, self._owns_db = adopt(where, STORE_SCHEMA, readonly=readonly, synchronous=synchronous)
        self.readonly = self.db.readonly
        self.dialect: Dialect = self.db.dialect
        self._on_close: list[Callable[[], None]] = []
        self._change = _CHANGE[self.dialect.name]

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

    def change_events(self, since_ts: float, until_ts: float) -> list[dict[str, Any]]:
        """Rows of `rtem.change.*` events (deploys, config changes) with since_ts <= ts <= until_ts."""
        return self._query(f"SELECT * FROM events WHERE {self._change} AND ts BETWEEN ? AND ? ORDER BY ts, id",
                           [since_ts, until_ts])

    def events_by_id(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Rows of these events (those the store has), by event time."""
        ids = list(event_ids)
        if not ids:
            return []
        return self._query(f"SELECT * FROM events WHERE id IN ({','.join('?' * len(ids))}) ORDER BY ts, id", ids)

    def error_events(self, incident_id: str, limit: int) -> list[dict[str, Any]]:
        """Rows of the incident's first `limit` events that raised a signal or are errors."""
        return self._query(f"SELECT * FROM events WHERE incident_id=? AND {_ERROR} ORDER BY ts, id LIMIT ?",
                           [incident_id, limit])

    def first_error(self, incident_id: str) -> dict[str, Any] | None:
        """The row of the incident's first signal or error event (else its first event; None if none)."""
        rows = self.error_events(incident_id, 1) or self._query(
            "SELECT * FROM events WHERE incident_id=? ORDER BY ts, id LIMIT 1", [incident_id])
        return rows[0] if rows else None

    def last_signal(self, incident_id: str, after_ts: float) -> float | None:
        """Event time of the incident's latest signal after `after_ts` (recovery means: none lately)."""
        row = self.db.connection().execute(
            "SELECT MAX(ts) FROM events WHERE incident_id=? AND ts>? AND signals IS NOT NULL",
            [incident_id, after_ts]).fetchone()
        return row[0] if row else None

    def alert_incident(self, subject: str, fingerprint: str, at_ts: float) -> str | None:
        """The incident of the latest firing `rtem.alert` with this fingerprint about `subject` (one that
        raised a signal) dated at or before `at_ts`: where a resolution of that alert belongs. Through the
        (subject, ts) index: an alert's fingerprint stands for its labels, its subject among them."""
        field = self.dialect.json_text
        row = self.db.connection().execute(
            f"""SELECT incident_id FROM events
               WHERE subject=? AND ts<=? AND type='rtem.alert' AND signals IS NOT NULL AND incident_id IS NOT NULL
                 AND {field('attributes', 'fingerprint')}=?
                 AND COALESCE({field('attributes', 'status')}, 'firing') != 'resolved'
               ORDER BY ts DESC, id DESC LIMIT 1""", [subject, at_ts, fingerprint]).fetchone()
        return row[0] if row else None

    def alert_events(self, incident_id: str) -> list[dict[str, Any]]:
        """The incident's `rtem.alert` events that carry a fingerprint, by event time: id, ts, fingerprint,
        alertname, status ('firing' unless it says 'resolved') and signal (whether it raised one)."""
        field = self.dialect.json_text
        return self._query(
            f"""SELECT id, ts, fingerprint, alertname, status, signal FROM (
                 SELECT id, ts, {field('attributes', 'fingerprint')} AS fingerprint,
                        {field('attributes', 'alertname')} AS alertname,
                        CASE {field('attributes', 'status')} WHEN 'resolved' THEN 'resolved' ELSE 'firing' END
                          AS status,
                        CASE WHEN signals IS NOT NULL THEN 1 ELSE 0 END AS signal
                 FROM events WHERE incident_id=? AND type='rtem.alert') AS alerts
               WHERE fingerprint IS NOT NULL ORDER BY ts, id""", [incident_id])

    def latest_state(self, entity: str, at_ts: float, max_age_s: float = 900.0, limit: int = 500) -> dict[str, Any]:
        """What rtem last observed about `entity` as of event time `at_ts`: the latest value of each
        attribute reported in events about it (subject = entity) within `max_age_s` before `at_ts`.
        Guardrail state preconditions read it (`state: {replica_lag_s: {gt: 30}}`, see docs/rules.md),
        through the (subject, ts) index."""
        rows = self.db.connection().execute(
            "SELECT attributes FROM events WHERE subject=? AND ts<=? AND ts>=? ORDER BY ts DESC, id DESC LIMIT ?",
            [entity, at_ts, at_ts - max_age_s, limit]).fetchall()
        state: dict[str, Any] = {}
        for (attributes,) in rows:
            for key, value in json.loads(attributes or "{}").items():
                state.setdefault(key, value)
        return state

    def past_event_shapes(self, before_ts: float, *, limit: int = 200,
                          exclude: str | None = None) -> tuple[list[str], list[tuple[Event, list[str]]]]:
        """What the `limit` most recent incidents opened before `before_ts` looked like, for learning
        background noise: their ids, and each distinct event shape (type, subject, severity and the
        attributes that say what was anomalous) once, with the incidents it occurred in.

        Only events before `before_ts` count, so nothing at or after the current incident's start leaks
        in; `exclude` (the current incident) never counts. SQLite groups the events, so Python sees a few
        hundred shapes rather than every event. Trace and metric messages are dropped from the shape (the
        attributes say it all); other messages are kept, since their text is what they say.
        """
        with self.db.snapshot() as conn:
            past = [r[0] for r in conn.execute(
                """SELECT id FROM incidents WHERE status != 'merged' AND first_ts < ? AND id != ?
                   ORDER BY first_ts DESC, id DESC LIMIT ?""", [before_ts, exclude or "", limit])]
            if not past:
                return [], []
            marks = ",".join("?" * len(past))
            field = self.dialect.json_text
            rows = conn.execute(f"""
                SELECT type, subject, severity, metric, direction, callee, caller, anomaly, alertname, message,
                       MIN(time), {self.dialect.distinct_list('incident_id')}
                FROM (SELECT incident_id, type, subject, severity, time,
                             {field('attributes', 'metric')} AS metric,
                             {field('attributes', 'direction')} AS direction,
                             {field('attributes', 'callee')} AS callee,
                             {field('attributes', 'caller')} AS caller,
                             {field('attributes', 'anomaly')} AS anomaly,
                             {field('attributes', 'alertname')} AS alertname,
                             CASE WHEN type = 'rtem.trace.anomaly' OR {field('attributes', 'metric')} IS NOT NULL
                                  THEN '' ELSE message END AS message
                      FROM events WHERE incident_id IN ({marks}) AND ts < ?) AS shaped
                GROUP BY type, subject, severity, metric, direction, callee, caller, anomaly, alertname, message""",
                [*past, before_ts]).fetchall()
        keys = ("metric", "direction", "callee", "caller", "anomaly", "alertname")
        shapes = []
        for number, (type_, subject, severity, *values, message, time, incidents) in enumerate(rows):
            attributes = {k: v for k, v in zip(keys, values) if v is not None}
            shape = Event(id=f"shape-{number}", source="rtem.store", type=type_, time=parse_time(time),
                          subject=subject, severity=severity, message=message or "", attributes=attributes)
            shapes.append((shape, incidents.split(",")))
        return past, shapes

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

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return dict_rows(self.db.connection().execute(sql, params))
