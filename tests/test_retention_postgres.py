"""Retention with the store on PostgreSQL: the graph's checkpoints live in the same database, in the tables of
LangGraph's PostgreSQL saver, and `purge` (`rtem purge`, the daily purge of `rtem run`) deletes those of closed
incidents there, with the same dry run and counts as checkpoints.db beside a SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterable

import psycopg
import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.store import IncidentStore, purge
from tests.test_retention import KEPT, NOW, POLICY, THREADS, add_incident, fill, stored_ids

pytestmark = pytest.mark.integration

runner = CliRunner()
CLOSED_LONG_AGO = {"old-closed", "old-escalated", "new-closed"}  # closed over 7 days before NOW


def add_checkpoints(url: str, threads: Iterable[str]) -> None:
    """Through the saver the graph uses (its own tables, made by its `setup()`): two checkpoints per thread,
    each with a channel value (a blob), and a pending write on the second."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        for thread in threads:
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            version = None
            for n in range(2):
                version = saver.get_next_version(version, None)
                checkpoint = empty_checkpoint()
                checkpoint["channel_values"] = {"status": [thread, n]}  # not a primitive: kept as a blob
                checkpoint["channel_versions"] = {"status": version}
                config = saver.put(config, checkpoint, {"step": n}, {"status": version})
            saver.put_writes(config, [("status", "pending")], task_id="t")


def rows(url: str) -> dict[str, dict[str, int]]:
    """Rows per thread in each of the saver's tables."""
    with psycopg.connect(url) as conn:
        return {table: dict(conn.execute(f"SELECT thread_id, COUNT(*) FROM {table} GROUP BY thread_id").fetchall())
                for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")}


def latest(url: str, thread: str):
    """What the graph would load for the thread: its latest checkpoint, or None."""
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        return saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})


@pytest.fixture
def filled(postgres_url):
    """The store of tests/test_retention.py (two incidents closed over 30 days ago, one 10 days ago, one open
    for 60 days) and the graph's checkpoints of all four, in one PostgreSQL database."""
    store = IncidentStore(postgres_url)
    fill(store)
    add_checkpoints(postgres_url, THREADS)
    yield store
    store.close()


def test_purge_deletes_the_checkpoints_of_closed_incidents_in_postgresql(filled, postgres_url):
    before = rows(postgres_url)
    assert before["checkpoints"] == before["checkpoint_blobs"] == dict.fromkeys(THREADS, 2)
    assert before["checkpoint_writes"] == dict.fromkeys(THREADS, 1)

    with AuditLog(postgres_url) as audit:
        dry = purge(filled, audit, POLICY, now=NOW, dry_run=True)
        assert (dry.checkpoint_threads, dry.checkpoints) == (3, 9)  # 2 checkpoints and 1 pending write each
        assert rows(postgres_url) == before, "a dry run changes nothing"

        report = purge(filled, audit, POLICY, now=NOW, actor="tester@host")
        assert (report.checkpoint_threads, report.checkpoints) == (3, 9)
        assert audit.records(kind="retention.purged")[-1].decision["checkpoints"] == 9
        again = purge(filled, audit, POLICY, now=NOW, dry_run=True)
        assert (again.checkpoint_threads, again.checkpoints) == (0, 0)

    # Every checkpoint, blob and pending write of the closed incidents went; the open one's stayed whole.
    assert rows(postgres_url) == {table: {"old-open": before[table]["old-open"]} for table in before}
    assert latest(postgres_url, "old-open") is not None
    assert all(latest(postgres_url, thread) is None for thread in CLOSED_LONG_AGO)
    assert stored_ids(filled) == KEPT  # the events went as on SQLite


def test_a_checkpoint_cutoff_keeps_recently_closed_incidents_in_postgresql(filled, postgres_url):
    from agent.store import RetentionPolicy

    with AuditLog(postgres_url) as audit:
        report = purge(filled, audit, RetentionPolicy(events_days=30, checkpoints_days=20, audit_days=400), now=NOW)
    assert (report.checkpoint_threads, report.checkpoints) == (2, 6)
    assert set(rows(postgres_url)["checkpoints"]) == {"new-closed", "old-open"}  # closed 10 days ago: kept


def test_a_database_no_graph_has_run_on_has_no_checkpoints_to_purge(postgres_url):
    store = IncidentStore(postgres_url)
    try:
        fill(store)
        with AuditLog(postgres_url) as audit:
            report = purge(store, audit, POLICY, now=NOW)
        assert (report.checkpoint_threads, report.checkpoints) == (0, 0) and report.events == 5
    finally:
        store.close()


def test_rtem_purge_on_postgresql_dry_run_then_purge(filled, postgres_url):
    # The CLI purges by the real clock, later than NOW: the same three closed incidents are over 7 days old.
    dry = runner.invoke(app, ["purge", "--dry-run", "--json", "--db", postgres_url])
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and (doc["checkpoint_threads"], doc["checkpoints"]) == (3, 9)
    assert set(rows(postgres_url)["checkpoints"]) == set(THREADS)

    done = runner.invoke(app, ["purge", "--db", postgres_url])
    assert done.exit_code == 0, done.output
    assert "graph checkpoints" in done.stdout and "9 (3 incidents)" in done.stdout
    assert set(rows(postgres_url)["checkpoints"]) == {"old-open"}


async def test_rtem_run_purges_checkpoints_in_postgresql_on_its_own(tmp_path, nats_server, boutique, postgres_url):
    import asyncio

    from agent.config import Settings
    from agent.run import Service
    from tests.live import wait_for

    store = IncidentStore(postgres_url)
    try:  # only closed incidents: the service drives open ones, and these have no real thread to resume
        add_incident(store, "old-closed", "resolved", closed_days_ago=40)
        add_incident(store, "new-closed", "escalated", closed_days_ago=10)
    finally:
        store.close()
    await asyncio.to_thread(add_checkpoints, postgres_url, ["old-closed", "new-closed", "not-an-incident"])

    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, database_url=postgres_url)
    service = await Service(settings, boutique, poll_s=0.05, retention_every_s=0.2).start()
    try:
        record = await wait_for(lambda: service.parts.audit.records(kind="retention.purged"), 20)
        assert record[0].inputs["by"] == "rtem run"
        # By the real clock both incidents closed over 7 days ago; a thread of no incident is not rtem's to judge.
        assert (record[0].decision["checkpoint_threads"], record[0].decision["checkpoints"]) == (2, 6)
    finally:
        await service.stop()
    assert set(rows(postgres_url)["checkpoints"]) == {"not-an-incident"}
