"""The database layer on both backends (a real SQLite file, a real PostgreSQL server): versioned
schemas and their migrations, the newer-schema refusal, `?` placeholders on PostgreSQL, a broken
connection replaced, and `rtem db status/migrate`."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.db import (DatabaseUnreachable, Migration, Schema, SchemaTooNew, StoreClosedError, check, migrate,
                      open_database, status, unavailable, versions)
from agent.storage import SCHEMAS
from agent.store import STORE_SCHEMA, IncidentStore

V1 = Migration(1, "a table", sqlite=("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)",),
               postgres=("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)",))
V2 = Migration(2, "a column", sqlite=("ALTER TABLE notes ADD COLUMN author TEXT",),
               postgres=("ALTER TABLE notes ADD COLUMN author TEXT",))


@pytest.fixture
def database(backend):
    db = open_database(backend)
    yield db
    db.close()


def test_migrations_run_once_each_and_in_order(database):
    assert versions(database) == {}
    assert migrate(database, [Schema("notes", (V1,))]) == [("notes", 0, 1)]
    assert migrate(database, [Schema("notes", (V1,))]) == [], "a second run has nothing to do"
    assert migrate(database, [Schema("notes", (V1, V2))]) == [("notes", 1, 2)]
    with database.write() as conn:
        conn.execute("INSERT INTO notes (id, body, author) VALUES (?, ?, ?)", ["n1", "50% done?", "ana"])
    assert database.connection().execute("SELECT body, author FROM notes").fetchall() == [("50% done?", "ana")]
    assert [s.to_dict() for s in status(database, [Schema("notes", (V1, V2))])] == [
        {"component": "notes", "version": 2, "known": 2, "state": "current"}]


def test_a_database_migrated_by_a_newer_rtem_is_refused(database, backend):
    migrate(database, [Schema("notes", (V1, V2))])
    older = Schema("notes", (V1,))
    assert status(database, [older])[0].state == "newer than this rtem"
    with pytest.raises(SchemaTooNew, match="notes version 2, this rtem knows 1"):
        check(database, [older])
    with pytest.raises(SchemaTooNew):
        migrate(database, [older])
    # The store refuses the same way, written or read.
    migrate(database, [STORE_SCHEMA])
    with database.write() as conn:
        conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'store'")
    for readonly in (False, True):
        with pytest.raises(SchemaTooNew, match="store version 99"):
            IncidentStore(backend, readonly=readonly)


def test_a_migration_that_fails_leaves_the_schema_as_it_was(database):
    broken = Migration(2, "broken", sqlite=("ALTER TABLE notes ADD COLUMN author TEXT", "NOT SQL"),
                       postgres=("ALTER TABLE notes ADD COLUMN author TEXT", "NOT SQL"))
    migrate(database, [Schema("notes", (V1,))])
    with pytest.raises(Exception):
        migrate(database, [Schema("notes", (V1, broken))])
    assert versions(database) == {"notes": 1}
    migrate(database, [Schema("notes", (V1, V2))])  # the column was not left behind
    assert versions(database) == {"notes": 2}


def test_workers_starting_together_migrate_once(backend):
    databases = [open_database(backend) for _ in range(4)]
    results: list = []
    errors: list = []

    def start(db):
        try:
            results.append(migrate(db, [STORE_SCHEMA, Schema("notes", (V1, V2))]))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for db in databases:
        db.close()
    assert errors == []
    assert sorted(step for done in results for step in done) == [("notes", 0, 2), ("store", 0, STORE_SCHEMA.version)]


def test_schema_versions_must_be_numbered_in_order():
    with pytest.raises(ValueError, match="numbered 1, 2"):
        Schema("notes", (V2, V1))


def test_question_marks_become_placeholders_outside_quotes_only():
    from agent.db._postgres import _pg

    assert _pg("SELECT ? WHERE a LIKE '50%?' AND b = ?") == "SELECT %s WHERE a LIKE '50%%?' AND b = %s"


@pytest.mark.integration
def test_a_connection_the_server_dropped_is_replaced(postgres_url):
    import psycopg

    store = IncidentStore(postgres_url)
    try:
        assert store.event_count() == 0
        pid = store.db.connection().execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError):
            store.event_count()  # the statement in flight fails: its batch is redelivered
        assert store.event_count() == 0, "the next one runs on a new connection"
        assert store.db.connection().execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    finally:
        store.close()


def test_rtem_db_status_and_migrate(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("RTEM_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    before = runner.invoke(app, ["db", "status", "--db", backend, "--json"]) if "://" in backend else None
    if before is not None:  # a PostgreSQL database exists before rtem touches it; a SQLite file does not
        assert before.exit_code == 0, before.output
        assert json.loads(before.stdout)["components"] == [
            {"component": s.component, "version": 0, "known": s.version, "state": "behind"} for s in SCHEMAS]
    done = runner.invoke(app, ["db", "migrate", "--db", backend, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["migrated"] == [{"component": s.component, "from": 0, "to": s.version}
                                                   for s in SCHEMAS]
    again = runner.invoke(app, ["db", "migrate", "--db", backend])
    assert again.exit_code == 0 and "already current" in again.stdout
    now = runner.invoke(app, ["db", "status", "--db", backend, "--json"])
    assert {c["state"] for c in json.loads(now.stdout)["components"]} == {"current"}
    assert "password" not in now.stdout
    database = open_database(backend)
    with database.write() as conn:
        conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'store'")
    database.close()
    newer = runner.invoke(app, ["db", "status", "--db", backend])
    assert newer.exit_code == 1 and "newer than this rtem" in newer.stdout
    refused = runner.invoke(app, ["db", "migrate", "--db", backend])
    assert refused.exit_code == 1 and "store version 99, this rtem knows" in refused.output


def test_what_counts_as_a_database_unavailable(tmp_path):
    """What makes a consumer hold its batch (bus/_hold.py) rather than fail it: the database's trouble, not the
    statement's or the data's."""
    import psycopg

    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    assert unavailable(refused.value)
    assert unavailable(DatabaseUnreachable("no answer")) and unavailable(StoreClosedError("closed"))

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0.05)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("INSERT INTO t VALUES (1)")
    assert unavailable(locked.value), str(locked.value)
    with pytest.raises(sqlite3.OperationalError) as typo:
        other.execute("SELEC 1")
    assert not unavailable(typo.value), "a mistake in the statement is no outage"
    holder.close()
    other.close()

    try:
        try:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        except psycopg.OperationalError as cause:
            raise RuntimeError("recording failed") from cause
    except RuntimeError as wrapped:
        assert unavailable(wrapped), "what it was raised from counts"
    assert not unavailable(ValueError("bad data"))
