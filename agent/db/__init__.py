"""Where rtem keeps its records: SQLite (the embedded default, one file) or PostgreSQL (several
workers on one database), behind one `Database` interface, with versioned schemas per component.

`open_database(target)` takes a path (SQLite) or a `postgresql://` URL. docs/storage.md.
"""

from __future__ import annotations

from pathlib import Path

from ._base import (POSTGRES, SQLITE, Connection, Cursor, Database, DatabaseUnreachable, Dialect, ReadOnlyStoreError,
                    StoreClosedError, unavailable)
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


def adopt(where: Database | str | Path, schema: Schema, **opening) -> tuple[Database, bool]:
    """A component's database and whether the component owns it: `where` itself when it is an open
    `Database` (shared: the component must not close it), else one opened on the path or URL with
    `opening` (owned). Its schema is ensured either way; a database opened here is closed again when that
    fails."""
    owned = not isinstance(where, Database)
    db = open_database(where, **opening) if owned else where
    try:
        ensure(db, schema)
    except BaseException:
        if owned:
            db.close()
        raise
    return db, owned


def redacted(target: str | Path) -> str:
    """A database for messages: a file as it is, a URL without its password."""
    if not is_postgres_url(target):
        return str(target)
    from ._postgres import redacted as without_password

    return without_password(str(target))


def reopen(db: Database, *, readonly: bool = True) -> Database:
    """Another `Database` on the same file or server as `db` (by default read-only): the API's readers
    beside the service's writers, or a component that must not share `db`'s connections."""
    if is_postgres_url(db.target):
        from ._postgres import PostgresDatabase

        return PostgresDatabase(db.target, readonly=readonly, pool_size=db.pool.max_size)
    return SqliteDatabase(db.target, synchronous=db.synchronous, readonly=readonly, busy_timeout_s=db.busy_timeout_s)


__all__ = ["POSTGRES", "SQLITE", "adopt", "Connection", "Cursor", "Database", "DatabaseUnreachable", "Dialect", "Migration", "ReadOnlyStoreError",
           "Schema", "SchemaStatus", "SchemaTooNew", "SqliteDatabase", "StoreClosedError", "check", "dict_rows",
           "ensure", "is_postgres_url", "migrate", "open_database", "redacted", "reopen", "status", "unavailable", "versions"]
