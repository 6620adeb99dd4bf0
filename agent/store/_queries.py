"""What the store's events say, read back: the evidence queries of `IncidentStore`.

The store (`_store.py`) writes events and incidents on the hot path and reads incidents back; the queries
here read *events* for those who weigh evidence: the report and chat (an incident's errors, its alerts,
the changes around it), the guard's state preconditions (`latest_state`), the reasoner's background
(`past_incidents`, `event_shapes`) and the lifecycle (`last_signal`, `alert_incident`). `IncidentStore` inherits
them, so every surface calls them on the store as before; they need only its `db` and `dialect`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bus import Event, parse_time
from rules.topology import SERVICE_ATTRIBUTES

from ..db import Database, Dialect, dict_rows

# Written out, not bound as parameters: a partial index serves only queries with the same literal terms
# (the store's schema builds its change index from this too).
CHANGE = {"sqlite": "type GLOB 'rtem.change.*'", "postgres": "type LIKE 'rtem.change.%'"}
ERROR = "(signals IS NOT NULL OR severity IN ('error','critical'))"


class EventQueries:
    """Evidence read from the `events` table of `db`; see the module's docstring."""

    db: Database
    dialect: Dialect

    def change_events(self, since_ts: float, until_ts: float) -> list[dict[str, Any]]:
        """Rows of `rtem.change.*` events (deploys, config changes) with since_ts <= ts <= until_ts."""
        changes = CHANGE[self.dialect.name]
        return self._query(f"SELECT * FROM events WHERE {changes} AND ts BETWEEN ? AND ? ORDER BY ts, id",
                           [since_ts, until_ts])

    def events_by_id(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Rows of these events (those the store has), by event time."""
        ids = list(event_ids)
        if not ids:
            return []
        return self._query(f"SELECT * FROM events WHERE id IN ({','.join('?' * len(ids))}) ORDER BY ts, id", ids)

    def error_events(self, incident_id: str, limit: int) -> list[dict[str, Any]]:
        """Rows of the incident's first `limit` events that raised a signal or are errors."""
        return self._query(f"SELECT * FROM events WHERE incident_id=? AND {ERROR} ORDER BY ts, id LIMIT ?",
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

    def past_incidents(self, before_ts: float, *, limit: int = 200,
                       exclude: str | None = None) -> list[tuple[str, int, float]]:
        """The `limit` most recent incidents opened before `before_ts` (not merged, not `exclude`), most
        recent first, each with the count and the latest time of its events before `before_ts`: what
        history may read of it, and a fingerprint of that part (it changes when an event is added or
        moved there), so what was read of it can be remembered (`agent.learning.LearningCache`)."""
        with self.db.snapshot() as conn:
            return [(incident, count, last) for incident, count, last in conn.execute(
                """SELECT i.id, COUNT(e.id), MAX(e.ts) FROM incidents i
                   LEFT JOIN events e ON e.incident_id = i.id AND e.ts < ?
                   WHERE i.status != 'merged' AND i.first_ts < ? AND i.id != ?
                   GROUP BY i.id, i.first_ts ORDER BY i.first_ts DESC, i.id DESC LIMIT ?""",
                [before_ts, before_ts, exclude or "", limit])]

    def event_shapes(self, incidents: Sequence[str], before_ts: float) -> list[tuple[Event, list[str]]]:
        """Each distinct event shape (type, subject, severity, the attributes that say what was anomalous,
        and the first of `SERVICE_ATTRIBUTES`, as `service.name`: it describes a subject the topology lacks,
        `Topology.with_described`) of `incidents`' events before `before_ts`, once, with the incidents it
        occurred in.

        The database groups the events, so Python sees the distinct shapes rather than every event. Trace
        and metric messages are dropped from the shape (the attributes say it all); other messages are
        kept, since their text is what they say.
        """
        if not incidents:
            return []
        marks = ",".join("?" * len(incidents))
        field = self.dialect.json_text
        with self.db.snapshot() as conn:
            rows = conn.execute(f"""
                SELECT type, subject, severity, metric, direction, callee, caller, anomaly, alertname, service,
                       message, MIN(time), {self.dialect.distinct_list('incident_id')}
                FROM (SELECT incident_id, type, subject, severity, time,
                             {field('attributes', 'metric')} AS metric,
                             {field('attributes', 'direction')} AS direction,
                             {field('attributes', 'callee')} AS callee,
                             {field('attributes', 'caller')} AS caller,
                             {field('attributes', 'anomaly')} AS anomaly,
                             {field('attributes', 'alertname')} AS alertname,
                             COALESCE({", ".join(field('attributes', a) for a in SERVICE_ATTRIBUTES)}) AS service,
                             CASE WHEN type = 'rtem.trace.anomaly' OR {field('attributes', 'metric')} IS NOT NULL
                                  THEN '' ELSE message END AS message
                      FROM events WHERE incident_id IN ({marks}) AND ts < ?) AS shaped
                GROUP BY type, subject, severity, metric, direction, callee, caller, anomaly, alertname, service,
                         message""",
                [*incidents, before_ts]).fetchall()
        keys = ("metric", "direction", "callee", "caller", "anomaly", "alertname", "service.name")
        shapes = []
        for number, (type_, subject, severity, *values, message, time, seen_in) in enumerate(rows):
            attributes = {k: v for k, v in zip(keys, values) if v is not None}
            shape = Event(id=f"shape-{number}", source="rtem.store", type=type_, time=parse_time(time),
                          subject=subject, severity=severity, message=message or "", attributes=attributes)
            shapes.append((shape, seen_in.split(",")))
        return shapes

    def past_event_shapes(self, before_ts: float, *, limit: int = 200,
                          exclude: str | None = None) -> tuple[list[str], list[tuple[Event, list[str]]]]:
        """What the `limit` most recent incidents opened before `before_ts` looked like, for learning
        background noise: their ids (`past_incidents`), and their events' distinct shapes before
        `before_ts` (`event_shapes`). Only events before `before_ts` count, so nothing at or after the
        current incident's start leaks in; `exclude` (the current incident) never counts."""
        past = [incident for incident, _, _ in self.past_incidents(before_ts, limit=limit, exclude=exclude)]
        return past, self.event_shapes(past, before_ts)

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return dict_rows(self.db.connection().execute(sql, params))
