"""`IncidentRepository`: what the graph, the service loop, the API and the CLI ask of the store.

`IncidentStore` (agent/store/_store.py) implements it on SQLite and on PostgreSQL alike. Rows are plain dicts with the incident's JSON columns (entities, detections,
root_causes, actions, versions) already decoded; events come back as `bus.Event`s or as dict rows of
`EVENT_COLUMNS`. Times named `*_ts` are event time in epoch seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from bus import Event

# An incident in one of these states needs nothing more from the service loop.
CLOSED_STATUSES = ("resolved", "escalated", "diagnosed", "merged", "failed")


@runtime_checkable
class IncidentRepository(Protocol):
    @property
    def where(self) -> str:
        """Where the data lives, for messages: a file, or a URL without its password."""
        ...

    # -- the hot path (agent/triage.py): a batch is written in one transaction, then acked ----------

    def transaction(self) -> AbstractContextManager[Any]:
        """Every write inside commits together or not at all, on the calling thread."""
        ...

    def known_ids(self, ids: Sequence[str]) -> set[str]: ...

    def insert_events(self, rows: Iterable[tuple]) -> None:
        """Rows of `EVENT_COLUMNS` (see `event_row`); an id already stored is skipped."""
        ...

    def attach(self, incident_id: str, event_ids: Iterable[str]) -> int:
        """Give events recorded before their incident existed to it; how many it took."""
        ...

    def merge(self, absorbed: str, keeper: str) -> None: ...

    def add_events(self, incident_id: str, count: int) -> None: ...

    def upsert_incident(self, state: dict[str, Any]) -> None: ...

    def save_state(self, key: str, value: Any) -> None: ...

    def load_state(self, key: str, default: Any = None) -> Any: ...

    # -- incidents ------------------------------------------------------------------------------------

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """By id, or by a unique prefix of one."""
        ...

    def incidents(self, status: str | None = None, include_merged: bool = False) -> list[dict[str, Any]]: ...

    def active_incidents(self) -> list[dict[str, Any]]:
        """Incidents not in `CLOSED_STATUSES`, oldest first: what the service loop looks at."""
        ...

    def save_diagnosis(self, incident_id: str, *, status: str, root_causes: list[dict[str, Any]],
                       actions: list[dict[str, Any]], versions: dict[str, str], mttr_s: float | None = None,
                       resolution: str | None = None) -> None: ...

    def set_status(self, incident_id: str, status: str) -> None: ...

    # -- a person's closing and reopening (agent/oncall.py): compare-and-set on the status ----------

    def close_by_person(self, incident_id: str, *, expect_status: str, status: str, actions: list[dict[str, Any]],
                        resolution: str, by: str) -> bool:
        """Close it if it is still `expect_status`; afterwards its thread cannot change it."""
        ...

    def reopen_by_person(self, incident_id: str, *, expect_status: str) -> bool: ...

    def closed_by_person(self, incident_id: str) -> dict[str, Any] | None: ...

    # -- events ---------------------------------------------------------------------------------------

    def events(self, incident_id: str) -> list[Event]: ...

    def event_incident_id(self, event_id: str) -> str | None:
        """The incident an event was recorded in, if any."""
        ...

    def change_events(self, since_ts: float, until_ts: float) -> list[dict[str, Any]]:
        """Rows of `rtem.change.*` events (deploys, config changes) with since_ts <= ts <= until_ts."""
        ...

    def events_by_id(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Rows of these events (those the store has), by event time."""
        ...

    def error_events(self, incident_id: str, limit: int) -> list[dict[str, Any]]:
        """Rows of the incident's first `limit` events that raised a signal or are errors."""
        ...

    def first_error(self, incident_id: str) -> dict[str, Any] | None:
        """The row of the incident's first signal or error event (else its first event; None if none)."""
        ...

    def last_signal(self, incident_id: str, after_ts: float) -> float | None: ...

    def alert_incident(self, subject: str, fingerprint: str, at_ts: float) -> str | None:
        """The incident of the latest firing `rtem.alert` with this fingerprint about `subject` (one that
        raised a signal) dated at or before `at_ts`: where a resolution of that alert belongs."""
        ...

    def alert_events(self, incident_id: str) -> list[dict[str, Any]]:
        """The incident's `rtem.alert` events that carry a fingerprint, by event time: id, ts, fingerprint,
        alertname, status ('firing' or 'resolved') and signal (whether it raised one)."""
        ...

    def latest_state(self, entity: str, at_ts: float, max_age_s: float = 900.0,
                     limit: int = 500) -> dict[str, Any]: ...

    def past_incidents(self, before_ts: float, *, limit: int = 200,
                       exclude: str | None = None) -> list[tuple[str, int, float]]: ...

    def event_shapes(self, incidents: Sequence[str], before_ts: float) -> list[tuple[Event, list[str]]]: ...

    def past_event_shapes(self, before_ts: float, *, limit: int = 200,
                          exclude: str | None = None) -> tuple[list[str], list[tuple[Event, list[str]]]]: ...

    def close(self) -> None: ...
