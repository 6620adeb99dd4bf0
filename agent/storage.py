"""Every component's schema, in the order `rtem db migrate` applies them, and the database a
configuration names (docs/storage.md)."""

from __future__ import annotations

from pathlib import Path

from .action_history import HISTORY_SCHEMA
from .audit import AUDIT_SCHEMA
from .cluster import LEASE_SCHEMA
from .config import Settings
from .db import Database, Schema, open_database
from .ledger import LEDGER_SCHEMA
from .rules_shared import RULES_SCHEMA
from .store import STORE_SCHEMA
from .tokens import TOKENS_SCHEMA

SCHEMAS: tuple[Schema, ...] = (STORE_SCHEMA, LEDGER_SCHEMA, HISTORY_SCHEMA, TOKENS_SCHEMA, AUDIT_SCHEMA, LEASE_SCHEMA,
                              RULES_SCHEMA)


def database_of(settings: Settings, target: str | Path | None = None, *, readonly: bool = False) -> Database:
    """The database `target` names (a `postgresql://` URL or a SQLite file), else the configured one
    (RTEM_DATABASE_URL, else RTEM_DATA_DIR/rtem.db)."""
    return open_database(target or settings.database, readonly=readonly, synchronous=settings.sqlite_synchronous,
                         pool_size=settings.database_pool_size)
