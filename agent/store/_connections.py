"""One SQLite connection per thread, so no Python lock stands between readers and writers.

The service writes on the event loop's thread while LangGraph nodes read on worker threads. One shared
connection needed one lock around every call, and sqlite-utils' savepoints still interleaved with another
thread's transaction. Here each thread gets its own connection (WAL, `busy_timeout`, the configured
`synchronous`): readers never wait for a writer, and a writer waits in SQLite (up to `busy_timeout`) for
another to commit. Writes run in `BEGIN IMMEDIATE`, which takes the write lock up front, so two writers
never both start and then find they cannot upgrade.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..files import DIR_MODE, private_file
from ._repository import ReadOnlyStoreError

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteConnections:
    """The connections of every thread to one SQLite file; `close()` closes them all."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False,
                 busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.readonly = readonly
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous={synchronous!r}: SQLite knows {', '.join(SYNCHRONOUS)}")
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._guard = threading.Lock()  # guards the list of connections, never held while one is used
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        if not readonly:  # token hashes and the audit log live here: 0600 (SQLite gives -wal and -shm the same)
            self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            private_file(self.path)

    def connection(self) -> sqlite3.Connection:
        """The calling thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._guard:
            self._refuse_if_closed()
            self._close_orphans()
        conn = self._connect()
        with self._guard:
            if self._closed:
                conn.close()
            self._refuse_if_closed()
            self._open.append((threading.current_thread(), conn))
        self._local.conn = conn
        self._local.writing = False
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection; inside one already open, joins it (the
        outer one commits or rolls back everything)."""
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.path} is open read-only (a reader beside the running service); "
                                     "writes go through the service")
        conn = self.connection()
        if conn.in_transaction:
            if not self._local.writing:
                raise RuntimeError(f"{self.path}: a write inside a read snapshot (it could not upgrade "
                                   "if another thread committed since the snapshot began)")
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.writing = True
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._local.writing = False

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that all see the same commit (a single statement needs none)."""
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # it only read

    def close(self) -> None:
        with self._guard:
            self._closed = True
            opened, self._open = self._open, []
        for _thread, conn in opened:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so that close() and _close_orphans() may close another thread's
        # connection; each connection is otherwise used by its own thread alone.
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self.busy_timeout_s)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_s)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            if not self.readonly:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path}: the store is closed")

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (a thread pool may replace its threads)."""
        alive = []
        for thread, conn in self._open:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                conn.close()
        self._open = alive


def dict_rows(cursor: sqlite3.Cursor) -> list[dict]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor]
