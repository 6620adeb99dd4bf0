"""SQLite, the embedded default: one file, WAL, one connection per thread.

Each connection has `busy_timeout` and the configured `synchronous`; writes run in `BEGIN IMMEDIATE`,
which takes the write lock up front. The file is created 0600 (token hashes and the audit log live
in it; SQLite gives its -wal and -shm the same mode).

Checkpoints (copying the WAL back into the file, with an fsync of each) run on a thread of their own
(`_Checkpointer`), not in whichever commit crossed SQLite's 1,000-page mark: on the hot path that commit
stalled the consumer for tens, once 150, milliseconds. A connection that writes has SQLite's automatic
checkpoint off; the thread starts with the first one, checkpoints every `checkpoint_every_s` (PASSIVE: it
never waits for or blocks a writer or a reader), and stops when the database closes. When the last
connection to a file closes, SQLite checkpoints what is left, as before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from ..files import DIR_MODE, private_file
from ._base import SQLITE
from ._threads import ThreadConnections

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
CHECKPOINT_EVERY_S = 1.0

log = logging.getLogger("rtem.db")


class SqliteDatabase(ThreadConnections):
    """One SQLite file; a `Database`."""

    dialect = SQLITE

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False,
                 busy_timeout_s: float = 30.0, checkpoint_every_s: float = CHECKPOINT_EVERY_S):
        super().__init__(readonly=readonly)
        self.checkpoint_every_s = checkpoint_every_s
        self._checkpointer: _Checkpointer | None = None
        self._checkpointer_guard = threading.Lock()
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
        conn = self._open_connection()
        if not self.readonly:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # `_Checkpointer` does it, off the writer's thread
            with self._checkpointer_guard:
                if self._checkpointer is None:
                    self._checkpointer = _Checkpointer(self, self.checkpoint_every_s)
        return conn

    def close(self) -> None:
        with self._checkpointer_guard:
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        super().close()

    def _open_connection(self) -> sqlite3.Connection:
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


class _Checkpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` every `every_s` on a daemon thread with a connection of its
    own, until stopped or until its database is gone (it holds the database weakly: a store a test never
    closed does not keep a thread checkpointing a deleted file). A checkpoint that fails (the file is
    busy, or went away) is tried again next time: until one succeeds the WAL only grows."""

    def __init__(self, db: SqliteDatabase, every_s: float):
        self._db = weakref.ref(db)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtem-checkpoint {db.path.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self._every_s):
                try:
                    if conn is None:
                        db = self._db()
                        if db is None:
                            return
                        conn = db._open_connection()
                        del db  # held weakly, as said
                    elif self._db() is None:
                        return
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.debug("checkpoint of the WAL failed (%s); tried again in %.1f s", exc, self._every_s)
        finally:
            if conn is not None:
                conn.close()
