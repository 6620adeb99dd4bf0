"""SQLite's WAL is checkpointed on a thread of its own (agent/db/_sqlite.py), never in a commit: on the hot
path the commit that crossed SQLite's 1,000-page mark ran the checkpoint and its fsyncs, and the consumer
stalled behind it. Real SQLite files; no server."""

from __future__ import annotations

import gc
import os
import threading
import time

from agent.db import SqliteDatabase

ROW = "x" * 4000  # about a page each


def write_pages(db: SqliteDatabase, pages: int) -> None:
    with db.write() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    for start in range(0, pages, 100):
        with db.write() as conn:
            conn.executemany("INSERT INTO t (body) VALUES (?)", [(ROW,)] * 100)


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_commit_never_checkpoints_the_wal(tmp_path):
    db = SqliteDatabase(tmp_path / "hot.db", checkpoint_every_s=3600)
    try:
        write_pages(db, 3000)  # three times the mark at which a commit would have checkpointed
        assert db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert os.path.getsize(tmp_path / "hot.db-wal") > 3000 * 4000
        assert os.path.getsize(tmp_path / "hot.db") < 1_000_000, "the pages are still in the WAL only"
    finally:
        db.close()


def test_the_checkpointer_copies_the_wal_back_and_stops_with_the_database(tmp_path):
    db = SqliteDatabase(tmp_path / "bg.db", checkpoint_every_s=0.1)
    write_pages(db, 1500)
    assert wait_for(lambda: os.path.getsize(tmp_path / "bg.db") > 1500 * 4000), "checkpointed in the background"
    assert db.connection().execute("SELECT count(*) FROM t").fetchone()[0] == 1500
    db.close()
    assert wait_for(lambda: not [t for t in threading.enumerate() if t.name == "rtem-checkpoint bg.db"])


def test_a_database_never_closed_does_not_keep_its_checkpointer(tmp_path):
    db = SqliteDatabase(tmp_path / "forgotten.db", checkpoint_every_s=0.05)
    write_pages(db, 10)
    assert [t for t in threading.enumerate() if t.name == "rtem-checkpoint forgotten.db"]
    del db
    gc.collect()
    assert wait_for(lambda: not [t for t in threading.enumerate() if t.name == "rtem-checkpoint forgotten.db"])


def test_a_read_only_database_starts_no_checkpointer(tmp_path):
    SqliteDatabase(tmp_path / "ro.db").close()
    writer = SqliteDatabase(tmp_path / "ro.db", checkpoint_every_s=3600)
    write_pages(writer, 1)
    writer.close()
    reader = SqliteDatabase(tmp_path / "ro.db", readonly=True)
    try:
        assert reader.connection().execute("SELECT count(*) FROM t").fetchone()[0] == 100
        assert not [t for t in threading.enumerate() if t.name == "rtem-checkpoint ro.db"]
    finally:
        reader.close()
