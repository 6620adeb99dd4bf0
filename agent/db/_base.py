"""What every storage backend gives the components that keep durable records: connections that speak
one SQL with `?` placeholders, write transactions, read snapshots, and the few SQL fragments in
which SQLite and PostgreSQL differ (`Dialect`)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class ReadOnlyStoreError(PermissionError):
    """A write to a store opened read-only (the CLI and the API read beside the running service)."""


class DatabaseUnreachable(OSError):
    """The database server did not accept a connection in time."""


class StoreClosedError(RuntimeError):
    """A use of a database after `close()`."""


# What SQLite says when the file, not the statement, is the trouble: another writer holds it past
# busy_timeout, the disk failed or is full, the file cannot be opened.
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o error", "disk is full", "unable to open")


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database cannot be used now for a reason of its
    own, not the data's: a PostgreSQL connection refused, broken or timed out (psycopg's OperationalError,
    its pool's PoolTimeout), SQLite's file locked, failing or full, or a database already closed. Whoever
    writes for an event stream then waits for the database instead of failing the events (`bus.Unavailable`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (DatabaseUnreachable, StoreClosedError)):
            return True
        if isinstance(exc, sqlite3.OperationalError) and any(word in str(exc).lower() for word in _SQLITE_UNAVAILABLE):
            return True
        psycopg = sys.modules.get("psycopg")  # loaded only where PostgreSQL is used
        if psycopg is not None and isinstance(exc, psycopg.OperationalError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class Dialect:
    """SQL that differs between the backends; everything else is written once."""

    name: str  # "sqlite" | "postgres"

    def json_text(self, column: str, key: str) -> str:
        """The value of `key` in the JSON object of `column` (a top-level key with no quote in it; a dotted
        key such as `service.name` is one key, not a path)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.\"{key}\"')" if "." in key else f"json_extract({column}, '$.{key}')"
        return f"(({column})::jsonb ->> '{key}')"

    def distinct_list(self, expr: str) -> str:
        """The distinct values of `expr` in a group, joined by commas."""
        if self.name == "sqlite":
            return f"group_concat(DISTINCT {expr})"
        return f"string_agg(DISTINCT {expr}, ',')"

    @property
    def begin_write(self) -> str:
        # SQLite takes the write lock up front, so two writers never both start and then fail to upgrade.
        return "BEGIN IMMEDIATE" if self.name == "sqlite" else "BEGIN"


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgres")


class Cursor(Protocol):
    """A DB-API cursor: what `Connection.execute` returns."""

    rowcount: int
    description: Any

    def fetchone(self) -> tuple | None: ...

    def fetchall(self) -> list[tuple]: ...

    def __iter__(self): ...


class Connection(Protocol):
    """One connection, used by one thread; SQL with `?` placeholders on either backend."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor: ...


@runtime_checkable
class Database(Protocol):
    """The connections of every thread to one database; components share one `Database`."""

    dialect: Dialect
    readonly: bool

    @property
    def where(self) -> str:
        """What to call it in messages: a file path, or a URL without its password."""
        ...

    @property
    def target(self) -> str | Path:
        """What `open_database` opened: the SQLite file, or the PostgreSQL URL (with its password)."""
        ...

    def connection(self) -> Connection:
        """The calling thread's connection, opened on first use; statements outside `write` and
        `snapshot` commit (or read) one by one."""
        ...

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction on this thread's connection; one opened inside another joins it."""
        ...

    def snapshot(self) -> AbstractContextManager[Connection]:
        """Several reads that all see the same commit."""
        ...

    def close(self) -> None: ...


def dict_rows(cursor: Cursor) -> list[dict]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor]
