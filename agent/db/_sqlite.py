"""SQLite, the embedded default: one file, WAL, one connection per thread.

Each connection has `busy_timeout` and the configured `synchronous`; writes run in `BEGIN IMMEDIATE`,
which takes the write lock up front. The file is created 0600 (token hashes and the audit log live
in it; SQLite gives its -wal and -shm the same mode).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..files import DIR_MODE, private_file
from ._base import SQLITE
from ._threads import ThreadConnections

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteDatabase(ThreadConnections):
    """One SQLite file; a `Database`."""

    dialect = SQLITE

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False,
                 busy_timeout_s: float = 30.0):
        super().__init__(readonly=readonly)
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous={synchronous!r}: SQLite knows {', '.join(SYNCHRONOUS)}")
        self.busy_timeout_s = busy_timeout_s
        if not readonly:
            self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            private_file(self.path)

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def target(self) -> Path:
        return self.path

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so that close() may close another thread's connection; each
        # connection is otherwise used by its own thread alone.
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self.busy_timeout_s)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_s)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            if not self.readonly:
                self._wal(conn)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. On a new file opened by several connections at once the switch can meet
        "database is locked" at once (it ignores busy_timeout): try again until busy_timeout is up."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _release(self, conn: sqlite3.Connection) -> None:
        conn.close()
