"""The incident store: events, incidents and the pipeline's state.

Callers use the `IncidentRepository` protocol; `IncidentStore` implements it on a `Database`
(agent/db: a SQLite file, the embedded default, or PostgreSQL). `purge` deletes what the retention
policy no longer keeps (docs/retention.md).
"""

from ..db import ReadOnlyStoreError
from ._repository import CLOSED_STATUSES, IncidentRepository
from ._retention import PurgeReport, RetentionPolicy, purge
from ._rows import EVENT_COLUMNS, event_from_row, event_row
from ._store import STORE_SCHEMA, IncidentStore

__all__ = ["CLOSED_STATUSES", "EVENT_COLUMNS", "STORE_SCHEMA", "IncidentRepository", "IncidentStore", "PurgeReport",
           "ReadOnlyStoreError", "RetentionPolicy", "event_from_row", "event_row", "purge"]
