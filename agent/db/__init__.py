"""Where rtem keeps its records: SQLite (the embedded default, one file) or PostgreSQL (several
workers on one database), behind one `Database` interface, with versioned schemas per component.

`open_database(target)` takes a path (SQLite) or a `postgresql://` URL. docs/storage.md.
"""

from __future__ import annotations

from pathlib import Path

from ._base import POSTGRES, SQLITE, Connection, Cursor, Database, Dialect, ReadOnlyStoreError, StoreClosedError
from ._base import dict_rows
from ._migrations import Migration, Schema, SchemaStatus, SchemaTooNew, check, ensure, migrate, status, versions
from ._sqlite import SqliteDatabase


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_database(target: str | Path, *, readonly: bool = False, synchronous: str = "NORMAL",
                  pool_size: int = 20) -> Database:
    """A `Database` on `target`: a `postgresql://` URL, else a SQLite file path."""
    if is_postgres_url(target):
        from ._postgres import PostgresDatabase  # psycopg is needed only here

        return PostgresDatabase(str(target), readonly=readonly, pool_size=pool_size)
    return SqliteDatabase(target, synchronous=synchronous, readonly=readonly)


__all__ = ["POSTGRES", "SQLITE", "Connection", "Cursor", "Database", "Dialect", "Migration", "ReadOnlyStoreError",
           "Schema", "SchemaStatus", "SchemaTooNew", "SqliteDatabase", "StoreClosedError", "check", "dict_rows",
           "ensure", "is_postgres_url", "migrate", "open_database", "status", "versions"]
