"""The incident store on real SQLite files and a real PostgreSQL server, one suite for both (the `backend`
fixture): per-thread connections, transactions, schema, read-only mode, the repository's reads."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from agent.action_history import DbActionHistory
from agent.db import StoreClosedError, versions
from agent.store import (CLOSED_STATUSES, STORE_SCHEMA, IncidentRepository, IncidentStore, ReadOnlyStoreError,
                         event_row)
from bus import Event

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
INDEXES = {"idx_events_incident_id_ts", "events_subject_ts", "events_changes_ts", "idx_incidents_status",
           "incidents_active"}


def event(i: int | str, seconds: float = 0.0, *, subject: str = "cart-0", type_: str = "rtem.log",
          **attributes) -> Event:
    return Event(id=f"e{i}", source="/t", type=type_, time=T0 + timedelta(seconds=seconds), subject=subject,
                 severity="warning", message=f"event {i}", attributes=attributes)


def incident(incident_id: str, first_ts: float = T0.timestamp()) -> dict:
    return {"id": incident_id, "first_ts": first_ts, "last_ts": first_ts + 60, "severity": "warning",
            "entities": ["cart-0"], "detections": ["d"], "signals": 1}


def write_batch(store: IncidentStore, incident_id: str, events: list[Event]) -> None:
    """What triage does per batch: events, incident, counts and state in one transaction."""
    with store.transaction():
        store.insert_events([event_row(e, incident_id, ["d"], "now") for e in events])
        store.upsert_incident(incident(incident_id, events[0].ts))
        store.add_events(incident_id, len(events))
        store.save_state("batch", incident_id)


@pytest.fixture
def store(backend):
    store = IncidentStore(backend)
    yield store
    store.close()


def test_schema_and_every_index_exist_right_after_open(store):
    conn = store.db.connection()
    if store.dialect.name == "sqlite":
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    else:
        names = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                            "UNION SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert {"events", "incidents", "pipeline_state", "schema_versions"} | INDEXES <= names
    assert isinstance(store, IncidentRepository)
    assert versions(store.db) == {"store": STORE_SCHEMA.version}


def test_concurrent_writers_and_readers_do_not_fail(store):
    writers, batches, per_batch = 4, 15, 20
    errors: list[BaseException] = []
    done = threading.Event()

    def write(w: int) -> None:
        for b in range(batches):
            events = [event(f"{w}-{b}-{i}", b * 60 + i) for i in range(per_batch)]
            write_batch(store, f"inc-{w}-{b}", events)
            if b % 5 == 0:
                store.set_status(f"inc-{w}-{b}", "resolved")

    def read() -> None:
        while not done.is_set():
            store.incidents()
            store.active_incidents()
            store.known_ids([f"e0-0-{i}" for i in range(50)])
            store.latest_state("cart-0", T0.timestamp() + 3600)
            store.past_event_shapes(T0.timestamp() + 3600)
            store.event_count()

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # collected: an exception in a thread would otherwise be lost
            errors.append(exc)

    readers = [threading.Thread(target=guarded, args=(read,)) for _ in range(3)]
    for thread in readers:
        thread.start()
    threads = [threading.Thread(target=guarded, args=(write, w)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    for thread in readers:
        thread.join(60)
    assert errors == []
    assert store.event_count() == writers * batches * per_batch
    assert len(store.incidents()) == writers * batches
    assert len(store.active_incidents()) == writers * (batches - 3)


def test_a_reader_thread_sees_what_another_thread_committed(store):
    with ThreadPoolExecutor(1) as reader:  # one thread, so its connection outlives each read
        assert reader.submit(store.event_count).result() == 0
        with store.transaction():
            store.insert_events([event_row(event(1), None, [], "now")])
            assert store.event_count() == 1  # the writer sees its own transaction
            assert reader.submit(store.event_count).result() == 0  # nobody else does yet
        assert reader.submit(store.event_count).result() == 1
        assert reader.submit(store.known_ids, ["e1", "e2"]).result() == {"e1"}


def test_a_batch_that_raises_rolls_back_everything(store):
    with pytest.raises(RuntimeError, match="handler failed"):
        with store.transaction():
            store.insert_events([event_row(event(1), "inc-1", ["d"], "now")])
            store.upsert_incident(incident("inc-1"))
            store.save_state("detector", {"x": 1})
            raise RuntimeError("handler failed")
    assert store.event_count() == 0 and store.incidents() == [] and store.load_state("detector") is None
    write_batch(store, "inc-2", [event(2)])  # the connection is usable again
    assert [r["id"] for r in store.incidents()] == ["inc-2"]


def test_writes_outside_a_transaction_commit_on_their_own(store, backend):
    store.insert_events([event_row(event(1), None, [], "now")])
    store.save_state("k", [1, 2])
    other = IncidentStore(backend, readonly=True)
    try:
        assert other.event_count() == 1 and other.load_state("k") == [1, 2]
    finally:
        other.close()


def test_a_readonly_store_reads_and_refuses_writes(store, backend):
    write_batch(store, "inc-1", [event(1), event(2, 5)])
    reader = IncidentStore(backend, readonly=True)
    try:
        assert reader.incident("inc-1")["event_count"] == 2
        assert [e.id for e in reader.events("inc-1")] == ["e1", "e2"]
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            reader.insert_events([event_row(event(3), None, [], "now")])
        with pytest.raises(ReadOnlyStoreError):
            with reader.transaction():
                pass
        with pytest.raises(ReadOnlyStoreError):
            reader.set_status("inc-1", "resolved")
    finally:
        reader.close()
    assert store.incident("inc-1")["status"] == "open" and store.event_count() == 2


def test_a_readonly_sqlite_store_never_creates_its_file(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        IncidentStore(tmp_path / "missing.db", readonly=True).event_count()
    assert not (tmp_path / "missing.db").exists()


def test_active_incidents_skip_closed_ones_through_their_index(store):
    statuses = ["open", "diagnosing", "awaiting_approval", "verifying", "paused", *CLOSED_STATUSES]
    for n, status in enumerate(statuses):
        store.upsert_incident(incident(f"inc-{n}", T0.timestamp() - n))
        store.set_status(f"inc-{n}", status)
    active = store.active_incidents()
    assert [r["status"] for r in active] == ["paused", "verifying", "awaiting_approval", "diagnosing", "open"]
    assert active[0]["entities"] == ["cart-0"]  # decoded like incidents()
    if store.dialect.name != "sqlite":
        return
    plan = store.db.connection().execute(
        "EXPLAIN QUERY PLAN SELECT * FROM incidents WHERE status NOT IN "
        "('resolved', 'escalated', 'diagnosed', 'merged', 'failed') ORDER BY first_ts, id").fetchall()
    assert "incidents_active" in str(plan)


def test_change_events_and_the_incident_of_an_event(store):
    deploy = event("d", -600, subject="cartservice", type_="rtem.change.deploy")
    config = event("c", -7200, subject="cartservice", type_="rtem.change.config")
    write_batch(store, "inc-1", [event(1), event(2, 30)])
    store.insert_events([event_row(deploy, None, [], "now"), event_row(config, None, [], "now")])
    assert store.event_incident_id("e2") == "inc-1"
    assert store.event_incident_id("ed") is None and store.event_incident_id("nope") is None
    rows = store.change_events(T0.timestamp() - 3600, T0.timestamp() + 30)
    assert [(r["id"], r["type"], r["subject"]) for r in rows] == [("ed", "rtem.change.deploy", "cartservice")]


def test_close_closes_every_threads_connection(tmp_path):
    store = IncidentStore(tmp_path / "rtem.db")
    with ThreadPoolExecutor(2) as pool:
        opened = list(pool.map(lambda _: store.db.connection(), range(8)))
        opened.append(store.db.connection())
        store.close()
        for conn in opened:
            with pytest.raises(sqlite3.ProgrammingError):
                conn.execute("SELECT 1")
        with pytest.raises(StoreClosedError):
            pool.submit(store.event_count).result()


def test_the_action_history_has_its_own_connections_and_closes_with_the_store(backend):
    store = IncidentStore(backend)
    history = DbActionHistory(store)
    assert history.db is not store.db and history.db.where == store.db.where
    entered, release = threading.Event(), threading.Event()

    def hold_a_batch() -> None:
        with store.transaction():
            store.insert_events([event_row(event(1), None, [], "now")])
            entered.set()
            release.wait(10)

    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(hold_a_batch)
        entered.wait(10)
        recorded = pool.submit(history.record, "restart_instance", "cart-0", T0, key="k1")
        if store.dialect.name == "sqlite":
            assert history.watermark() == 0  # the record waits for the batch's write lock; reads do not
        else:
            assert recorded.result(10)  # PostgreSQL locks rows, not the database: the record does not wait
        release.set()
        assert recorded.result(10) and batch.result(10) is None
    assert history.count("restart_instance", since=T0 - timedelta(minutes=1), until=T0) == 1
    store.close()
    with pytest.raises(StoreClosedError):
        history.watermark()


def test_evidence_reads_without_sql_in_the_caller(store):
    """What chat and the LLM's retrieval read through the repository: events by id, the first errors
    or signals of an incident (else its first event), and the changes in a window."""
    write_batch(store, "inc-a", [event(1, 0), event(2, 5)])  # both raised a signal
    assert [r["id"] for r in store.error_events("inc-a", 1)] == ["e1"]
    deploy = event(3, 10, subject="cart", type_="rtem.change.deploy")
    failing = Event(id="e4", source="/t", type="rtem.log", time=T0 + timedelta(seconds=20), subject="cart-0",
                    severity="error", message="boom")
    with store.transaction():
        store.insert_events([event_row(deploy, None, [], "now"), event_row(failing, "inc-b", [], "now"),
                             event_row(event(5, 30), "inc-c", [], "now"), event_row(failing.model_copy(
                                 update={"id": "e6", "time": T0 + timedelta(seconds=40)}), "inc-c", [], "now"),
                             event_row(event(7, 50), "inc-d", [], "now")])
        store.upsert_incident(incident("inc-b", failing.ts))
    assert [r["id"] for r in store.events_by_id(["e4", "e1", "nope"])] == ["e1", "e4"]
    assert store.events_by_id([]) == []
    assert [r["id"] for r in store.error_events("inc-b", 5)] == ["e4"]
    assert store.first_error("inc-b")["id"] == "e4"
    assert store.first_error("inc-c")["id"] == "e6", "an error before the first event of any kind"
    assert store.first_error("inc-d")["id"] == "e7", "no error: its first event"
    assert store.first_error("nothing") is None
    assert [r["id"] for r in store.change_events(T0.timestamp(), T0.timestamp() + 15)] == ["e3"]
    assert store.change_events(T0.timestamp() + 11, T0.timestamp() + 30) == []
