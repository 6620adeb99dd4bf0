"""The incident store: events, incidents and the pipeline's state, in one SQLite file.

Every batch is written in ONE transaction (events, incident updates, detector and correlator
state), and the bus acks only after it commits. A crash before the commit redelivers the batch;
a crash after it redelivers events the store already has, which `known_ids` filters out. So an
event is recorded exactly once however often it arrives.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from bus import Event, format_time, parse_time


EVENT_COLUMNS = ("id", "ts", "time", "type", "subject", "severity", "source", "message", "attributes",
                 "incident_id", "signals", "received_at")


def _serialized(method):
    """Hold the store's lock for the whole call: graph nodes run on worker threads and share this
    connection with the event loop, and sqlite-utils wraps reads in savepoints that must not
    interleave with another thread's transaction on the same connection."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return locked


class IncidentStore:
    def __init__(self, path: str | Path, synchronous: str = "NORMAL", *, readonly: bool = False):
        """`readonly` is for readers beside a running service (the CLI): it never takes a write lock."""
        self.path = Path(path)
        self.lock = threading.RLock()  # serializes every use of self.db (see _serialized)
        if readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None, timeout=30)
            self.db = sqlite_utils.Database(conn)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self._create()

    def _create(self) -> None:
        if "events" not in self.db.table_names():
            self.db["events"].create({
                "id": str, "ts": float, "time": str, "type": str, "subject": str, "severity": str,
                "source": str, "message": str, "attributes": str, "incident_id": str, "signals": str,
                "received_at": str}, pk="id")
            self.db["events"].create_index(["incident_id", "ts"])
        if "incidents" not in self.db.table_names():
            self.db["incidents"].create({
                "id": str, "opened_at": str, "updated_at": str, "first_ts": float, "last_ts": float,
                "status": str, "severity": str, "entities": str, "detections": str, "signal_count": int,
                "event_count": int, "merged_into": str, "root_causes": str, "actions": str,
                "versions": str, "diagnosed_at": str, "mttr_s": float, "resolution": str}, pk="id")
            self.db["incidents"].create_index(["status"])
        if "pipeline_state" not in self.db.table_names():
            self.db["pipeline_state"].create({"key": str, "value": str}, pk="key")

    @contextmanager
    def transaction(self):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- the hot path -----------------------------------------------------------------------------

    @_serialized
    def known_ids(self, ids: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(r[0] for r in self.db.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk))
        return known

    @_serialized
    def insert_events(self, rows: Iterable[tuple]) -> None:
        marks = ",".join("?" * len(EVENT_COLUMNS))
        self.db.conn.executemany(f"INSERT OR IGNORE INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({marks})", rows)

    @_serialized
    def attach(self, incident_id: str, event_ids: Iterable[str]) -> int:
        """Give events recorded before their incident existed (a threshold's early events) to it;
        returns how many it took."""
        cursor = self.db.conn.executemany("UPDATE events SET incident_id=? WHERE id=? AND incident_id IS NULL",
                                          [(incident_id, e) for e in event_ids])
        return cursor.rowcount

    @_serialized
    def merge(self, absorbed: str, keeper: str) -> None:
        self.db.execute("UPDATE events SET incident_id=? WHERE incident_id=?", [keeper, absorbed])
        self.db.execute("""UPDATE incidents SET event_count = event_count +
                             COALESCE((SELECT event_count FROM incidents WHERE id=?), 0) WHERE id=?""",
                        [absorbed, keeper])
        self.db.execute("UPDATE incidents SET status='merged', merged_into=? WHERE id=?", [keeper, absorbed])

    @_serialized
    def add_events(self, incident_id: str, count: int) -> None:
        """Counted as events arrive, not recounted: a storm's incident would make every batch slower."""
        self.db.execute("UPDATE incidents SET event_count = event_count + ? WHERE id=?", [count, incident_id])

    @_serialized
    def upsert_incident(self, state: dict[str, Any]) -> None:
        self.db.execute(
            """INSERT INTO incidents (id, opened_at, updated_at, first_ts, last_ts, status, severity, entities,
                                      detections, signal_count, event_count)
               VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET opened_at=excluded.opened_at, updated_at=excluded.updated_at,
                 first_ts=excluded.first_ts, last_ts=excluded.last_ts, severity=excluded.severity,
                 entities=excluded.entities, detections=excluded.detections,
                 signal_count=excluded.signal_count""",
            [state["id"], _iso(state["first_ts"]), _iso(state["last_ts"]), state["first_ts"], state["last_ts"],
             state["severity"], json.dumps(state["entities"]), json.dumps(state["detections"]), state["signals"], 0])

    @_serialized
    def save_state(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO pipeline_state (key, value) VALUES (?, ?)", [key, json.dumps(value)])

    @_serialized
    def load_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM pipeline_state WHERE key=?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    # -- reading ----------------------------------------------------------------------------------

    @_serialized
    def incident(self, incident_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM incidents WHERE id=?", [incident_id]))
        if not rows:
            rows = list(self.db.query("SELECT * FROM incidents WHERE id LIKE ? ORDER BY first_ts",
                                      [incident_id + "%"]))
            if len(rows) != 1:
                return None
        return _decode(rows[0])

    @_serialized
    def incidents(self, status: str | None = None, include_merged: bool = False) -> list[dict[str, Any]]:
        where, params = [], []
        if status:
            where.append("status=?")
            params.append(status)
        elif not include_merged:
            where.append("status!='merged'")
        sql = "SELECT * FROM incidents" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY first_ts, id"
        return [_decode(r) for r in self.db.query(sql, params)]

    @_serialized
    def events(self, incident_id: str) -> list[Event]:
        return [event_from_row(r) for r in self.db.query(
            "SELECT * FROM events WHERE incident_id=? ORDER BY ts, id", [incident_id])]

    @_serialized
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
        past = [r[0] for r in self.db.execute(
            """SELECT id FROM incidents WHERE status != 'merged' AND first_ts < ? AND id != ?
               ORDER BY first_ts DESC, id DESC LIMIT ?""", [before_ts, exclude or "", limit])]
        if not past:
            return [], []
        marks = ",".join("?" * len(past))
        rows = self.db.execute(f"""
            SELECT type, subject, severity, metric, direction, callee, caller, anomaly, alertname, message,
                   MIN(time), group_concat(DISTINCT incident_id)
            FROM (SELECT incident_id, type, subject, severity, time,
                         json_extract(attributes, '$.metric') AS metric,
                         json_extract(attributes, '$.direction') AS direction,
                         json_extract(attributes, '$.callee') AS callee,
                         json_extract(attributes, '$.caller') AS caller,
                         json_extract(attributes, '$.anomaly') AS anomaly,
                         json_extract(attributes, '$.alertname') AS alertname,
                         CASE WHEN type = 'rtem.trace.anomaly' OR json_extract(attributes, '$.metric') IS NOT NULL
                              THEN '' ELSE message END AS message
                  FROM events WHERE incident_id IN ({marks}) AND ts < ?)
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

    @_serialized
    def event_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    @_serialized
    def save_diagnosis(self, incident_id: str, *, status: str, root_causes: list[dict[str, Any]],
                       actions: list[dict[str, Any]], versions: dict[str, str], mttr_s: float | None = None,
                       resolution: str | None = None) -> None:
        with self.transaction():
            self.db["incidents"].update(incident_id, {
                "status": status, "root_causes": json.dumps(root_causes), "actions": json.dumps(actions),
                "versions": json.dumps(versions), "diagnosed_at": datetime.now(timezone.utc).isoformat(),
                "mttr_s": mttr_s, "resolution": resolution})

    @_serialized
    def set_status(self, incident_id: str, status: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE incidents SET status=? WHERE id=?", [status, incident_id])

    @_serialized
    def last_signal(self, incident_id: str, after_ts: float) -> float | None:
        """Event time of the incident's latest signal after `after_ts` (recovery means: none lately)."""
        row = self.db.execute("SELECT MAX(ts) FROM events WHERE incident_id=? AND ts>? AND signals IS NOT NULL",
                              [incident_id, after_ts]).fetchone()
        return row[0] if row else None

    @_serialized
    def latest_state(self, entity: str, at_ts: float, max_age_s: float = 900.0, limit: int = 500) -> dict[str, Any]:
        """What rtem last observed about `entity` as of event time `at_ts`: the latest value of each
        attribute reported in events about it (subject = entity) within `max_age_s` before `at_ts`.
        Guardrail state preconditions read it (`state: {replica_lag_s: {gt: 30}}`, see docs/rules.md).
        The (subject, ts) index it needs is created on first use, so a store whose rules never ask
        pays nothing for it on the ingest path."""
        if not getattr(self, "_state_index", False):
            self.db.execute("CREATE INDEX IF NOT EXISTS events_subject_ts ON events (subject, ts)")
            self._state_index = True
        rows = self.db.execute(
            "SELECT attributes FROM events WHERE subject=? AND ts<=? AND ts>=? ORDER BY ts DESC, id DESC LIMIT ?",
            [entity, at_ts, at_ts - max_age_s, limit]).fetchall()
        state: dict[str, Any] = {}
        for (attributes,) in rows:
            for key, value in json.loads(attributes or "{}").items():
                state.setdefault(key, value)
        return state

    @_serialized
    def close(self) -> None:
        self.db.conn.close()


def event_row(event: Event, incident_id: str | None, signals: Sequence[str], received_at: str) -> tuple:
    return (event.id, event.ts, format_time(event.time), event.type, event.subject, event.severity,
            event.source, event.message, json.dumps(event.attributes), incident_id,
            json.dumps(list(signals)) if signals else None, received_at)


def event_from_row(row: dict[str, Any]) -> Event:
    return Event(id=row["id"], source=row["source"], type=row["type"],
                 time=parse_time(row["time"]), subject=row["subject"],
                 severity=row["severity"], message=row["message"] or "",
                 attributes=json.loads(row["attributes"] or "{}"))



def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("entities", "detections", "root_causes", "actions", "versions"):
        if key in row:
            row[key] = json.loads(row[key]) if row[key] else ([] if key != "versions" else {})
    return row


def _iso(ts: float) -> str:
    return format_time(datetime.fromtimestamp(ts, timezone.utc))
