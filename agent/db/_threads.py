"""One connection per thread, so no Python lock stands between readers and writers.

The service writes on the event loop's thread while LangGraph nodes read on worker threads. One shared
connection needed one lock around every call, and a savepoint still interleaved with another thread's
transaction. Here each thread gets its own connection: readers never wait for a writer, and a writer
waits in the database for another to commit. Both backends (`SqliteDatabase`, `PostgresDatabase`)
share this; they differ in how a connection is opened and given back.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._base import Connection, Dialect, ReadOnlyStoreError, StoreClosedError


class ThreadConnections(ABC):
    """The connections of every thread to one database; `close()` closes them all. A backend says how
    a connection is opened and given back, and what to call the database in messages."""

    dialect: Dialect

    def __init__(self, *, readonly: bool):
        self.readonly = readonly
        self._local = threading.local()
        self._guard = threading.Lock()  # guards the list of connections, never held while one is used
        self._open: list[tuple[threading.Thread, Any]] = []
        self._closed = False

    @property
    @abstractmethod
    def where(self) -> str:
        """The database, for messages (a URL without its password)."""

    @abstractmethod
    def _connect(self) -> Any:
        """A new connection for the calling thread."""

    @abstractmethod
    def _release(self, conn: Any) -> None:
        """Close `conn` or give it back (from any thread)."""

    def connection(self) -> Connection:
        """The calling thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._guard:
            self._refuse_if_closed()
            orphans = self._orphans()
        for orphan in orphans:
            self._release(orphan)
        conn = self._connect()
        with self._guard:
            if self._closed:
                self._release(conn)
            self._refuse_if_closed()
            self._open.append((threading.current_thread(), conn))
        self._local.conn = conn
        self._local.writing = False
        return conn

    def forget(self) -> None:
        """Drop the calling thread's connection (it broke: the next use opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._guard:
            self._open = [(t, c) for t, c in self._open if c is not conn]
        self._release(conn)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction on this thread's connection; inside one already open, joins it (the
        outer one commits or rolls back everything)."""
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.where} is open read-only (a reader beside the running service); "
                                     "writes go through the service")
        conn = self.connection()
        if conn.in_transaction:
            if not self._local.writing:
                raise RuntimeError(f"{self.where}: a write inside a read snapshot (it could not upgrade "
                                   "if another thread committed since the snapshot began)")
            yield conn
            return
        conn.execute(self.dialect.begin_write)
        self._local.writing = True
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            self._end(conn)
            raise
        finally:
            self._local.writing = False

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """Several reads that all see the same commit (a single statement needs none)."""
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN" if self.dialect.name == "sqlite" else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield conn
        finally:
            self._end(conn)  # it only read

    def _end(self, conn: Any) -> None:
        """Roll back what `conn` has open; a connection that broke on the way is dropped."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception:
            self.forget()
            raise

    def close(self) -> None:
        with self._guard:
            self._closed = True
            opened, self._open = self._open, []
        for _thread, conn in opened:
            self._release(conn)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.where}: the store is closed")

    def _orphans(self) -> list[Any]:
        """The connections of threads that have ended (a thread pool may replace its threads)."""
        alive, dead = [], []
        for thread, conn in self._open:
            (alive if thread.is_alive() else dead).append((thread, conn))
        self._open = alive
        return [conn for _thread, conn in dead]
