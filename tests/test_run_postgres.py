"""`rtem run` with RTEM_DATABASE_URL: every record and checkpoint in a real PostgreSQL database (a schema
of the test's own), none in the data directory; the API reads it, the audit log verifies, and a restart
on the same database resumes without acting twice."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import Settings
from agent.run import Service
from agent.tokens import TokenStore
from tests.conftest import EXAMPLES
from tests.live import Target, anomaly, publish, wait_for

pytestmark = pytest.mark.integration

SERVICE_CPU = [anomaly(f"c{i}", f"cartservice-{i % 3}", i) for i in range(12)]


def settings(tmp_path, nats_server, postgres_url, **more) -> Settings:
    return Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, database_url=postgres_url,
                    diagnose_after_s=5, verify_quiet_s=30, **more)


def tables(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


async def test_rtem_run_keeps_everything_in_postgresql(tmp_path, nats_server, bus, boutique, postgres_url,
                                                       monkeypatch):
    target = Target(fail={"shed_load"})
    await target.attach(bus.nc)
    token, _ = TokenStore(postgres_url).create("ops", "operator")
    service = await Service(settings(tmp_path, nats_server, postgres_url, http_port=0), boutique, poll_s=0.05,
                            http=True).start()
    try:
        await publish(bus, SERVICE_CPU)
        row = await wait_for(lambda: (rows := service.parts.store.incidents()) and rows[0]["status"] == "escalated"
                             and rows[0], 40)
        assert [(key.rsplit("/", 1)[1], action) for key, action, _ in target.applied] == [
            ("do", "scale_out"), ("compensate", "scale_out")]
        async with httpx.AsyncClient(base_url=service.http_url, headers={"Authorization": f"Bearer {token}"}) as api:
            listed = (await api.get("/api/v1/incidents")).json()
            assert [i["id"] for i in listed["incidents"]] == [row["id"]], "the API reads the same database"
    finally:
        await service.stop()

    assert {"events", "incidents", "executions", "approvals", "audit", "action_history", "api_tokens",
            "schema_versions", "leases", "checkpoints", "checkpoint_writes"} <= tables(postgres_url)
    assert not (tmp_path / "data" / "rtem.db").exists(), "no record went to a SQLite file"
    monkeypatch.setenv("RTEM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RTEM_DATABASE_URL", postgres_url)
    verified = CliRunner().invoke(app, ["audit", "verify", "--local-only"])
    assert verified.exit_code == 0, verified.output
    shown = CliRunner().invoke(app, ["incidents", "--json"])
    assert shown.exit_code == 0 and row["id"] in shown.stdout

    # A restart on the same database finds the incident closed and acts on nothing again.
    again = await Service(settings(tmp_path, nats_server, postgres_url), boutique, poll_s=0.05).start()
    try:
        await asyncio.sleep(2)  # some forty passes of its loop over the active incidents: there are none
        assert [(i["id"], i["status"]) for i in again.parts.store.incidents()] == [(row["id"], "escalated")]
        assert len(target.applied) == 2, "nothing ran twice"
    finally:
        await again.stop()


def test_rtem_run_refuses_a_database_it_cannot_reach_or_a_newer_one(tmp_path, postgres_url, monkeypatch):
    from agent.db import migrate, open_database
    from agent.storage import SCHEMAS

    monkeypatch.setenv("RTEM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RTEM_DATABASE_URL", "postgresql://rtem:secret@127.0.0.1:9/none?connect_timeout=1")
    unreachable = CliRunner().invoke(app, ["run", "--topology", str(EXAMPLES / "boutique-topology.json"), "--no-http"])
    assert unreachable.exit_code != 0 and "cannot connect to PostgreSQL" in unreachable.output
    assert "secret" not in unreachable.output

    db = open_database(postgres_url)
    migrate(db, SCHEMAS)
    with db.write() as conn:
        conn.execute("UPDATE schema_versions SET version = version + 1 WHERE component = 'ledger'")
    db.close()
    monkeypatch.setenv("RTEM_DATABASE_URL", postgres_url)
    newer = CliRunner().invoke(app, ["run", "--topology", str(EXAMPLES / "boutique-topology.json"), "--no-http"])
    assert newer.exit_code == 1 and "migrated by a newer rtem (ledger version 2, this rtem knows 1)" in newer.output


async def test_workers_starting_together_on_a_new_database_make_the_checkpoint_tables_once(postgres_url):
    """The checkpointer's setup creates indexes CONCURRENTLY, which waits for every older transaction in the
    database: workers that waited for the setup lock inside pg_advisory_lock were such transactions, and
    three workers starting together on a new database waited for each other forever."""
    from agent.graph import IncidentGraph

    graphs = [IncidentGraph(postgres_url, deps=None) for _ in range(3)]
    try:
        await asyncio.wait_for(asyncio.gather(*(graph.open() for graph in graphs)), 60)
        assert {"checkpoints", "checkpoint_writes", "checkpoint_blobs"} <= tables(postgres_url)
    finally:
        for graph in graphs:
            await graph.close()
