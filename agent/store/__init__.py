"""The incident store: events, incidents and the pipeline's state.

Callers use the `IncidentRepository` protocol; `IncidentStore` is the SQLite implementation
(`SqliteIncidentStore`), one connection per thread. A PostgreSQL implementation can stand behind the
same protocol. `purge` deletes what the retention policy no longer keeps (docs/retention.md).
"""

from ._connections import SqliteConnections
from ._repository import CLOSED_STATUSES, IncidentRepository, ReadOnlyStoreError
from ._retention import PurgeReport, RetentionPolicy, purge
from ._rows import EVENT_COLUMNS, event_from_row, event_row
from ._sqlite import SqliteIncidentStore

IncidentStore = SqliteIncidentStore  # the name every caller imports

__all__ = ["CLOSED_STATUSES", "EVENT_COLUMNS", "IncidentRepository", "IncidentStore", "PurgeReport",
           "ReadOnlyStoreError", "RetentionPolicy", "SqliteConnections", "SqliteIncidentStore", "event_from_row",
           "event_row", "purge"]
