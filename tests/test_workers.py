"""Several `rtem run` workers on one PostgreSQL database and one NATS server: one leads (consumes, drives
the incidents), the others stand by and serve the API; a standby takes over when the leader stops
(cleanly, or killed with SIGKILL), and nothing is recorded or executed twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from agent.run import Service
from bus import Unavailable, parse_event
from tests.conftest import EXAMPLES
from tests.live import Target, anomaly, publish, settings, wait_for

pytestmark = pytest.mark.integration

CART = [anomaly(f"cart{i}", f"cartservice-{i % 3}", i) for i in range(12)]  # scale_out, then shed_load
CURRENCY = [anomaly(f"cur{i}", f"currencyservice-{i % 3}", 2000 + i) for i in range(12)]  # later, elsewhere


def worker(tmp_path, nats_server, postgres_url, topology, name: str, **more) -> Service:
    """An in-process `rtem run` worker named `name`, with a short leader lease."""
    return Service(settings(tmp_path / name, nats_server, database_url=postgres_url, worker_id=name,
                            leader_lease_s=1.5, **more), topology, poll_s=0.05, http="http_port" in more)


def leader(postgres_url: str) -> tuple[str, int, bool]:
    """(holder, epoch, live) of the leader lease; ("", 0, False) before any worker made the table."""
    with psycopg.connect(postgres_url) as conn:
        if conn.execute("SELECT to_regclass('leases')").fetchone()[0] is None:
            return "", 0, False
        row = conn.execute("SELECT holder, epoch, expires_at > EXTRACT(EPOCH FROM clock_timestamp()) "
                           "FROM leases WHERE name = 'leader'").fetchone()
    return row if row else ("", 0, False)


async def test_one_worker_leads_and_a_standby_takes_over_when_it_stops(tmp_path, nats_server, bus, boutique,
                                                                       postgres_url):
    target = Target(fail={"shed_load"})
    await target.attach(bus.nc)
    a = await worker(tmp_path, nats_server, postgres_url, boutique, "a").start()
    b = await worker(tmp_path, nats_server, postgres_url, boutique, "b", http_port=0).start()
    try:
        assert (a.role, b.role) == ("leader", "standby")
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            assert (await http.get("/readyz")).json() == {"ready": True, "role": "standby"}
        await publish(bus, CART)
        first = await wait_for(lambda: (rows := a.parts.store.incidents()) and rows[0]["status"] == "escalated"
                               and rows[0], 40)
        assert b.parts.triage.stats.events == 0, "a standby does not consume"
        assert [r["id"] for r in b.parts.store.incidents()] == [first["id"]], "it reads the shared database"

        await a.stop()  # a clean stop hands the lease over at once
        await wait_for(lambda: b.role == "leader", 10)
        assert leader(postgres_url)[:2] == ("b", 2)
        await publish(bus, CURRENCY)
        await wait_for(lambda: len([r for r in b.parts.store.incidents() if r["status"] == "escalated"]) == 2, 40)
        assert sorted(target.applied) == sorted(set(target.applied)) and len(target.applied) == 4, \
            "each incident's scale_out and its compensation, once each"
        assert b.parts.store.event_count() == len(CART) + len(CURRENCY)
    finally:
        await b.stop()
        if a.parts is not None and a.role == "leader":
            await a.stop()


async def test_a_worker_that_lost_its_lease_can_no_longer_write_as_leader(tmp_path, nats_server, boutique,
                                                                         postgres_url):
    from agent.cluster import Fenced

    a = await worker(tmp_path, nats_server, postgres_url, boutique, "a").start()
    try:
        lease = a.leadership.lease
        assert a.ownership.take("inc-x")
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # as if `a` was paused past its leases
            conn.execute("UPDATE leases SET holder = 'b', epoch = epoch + 1 WHERE name IN ('leader', 'incident:inc-x')")
        with pytest.raises(Fenced, match="incident:inc-x of a at epoch 1 is gone"):
            a.parts.ledger.start("inc-x/0/do", "inc-x", 0, "do", "restart_instance", "cartservice-0", {})
        assert a.parts.ledger.get("inc-x/0/do") is None, "nothing was started"
        batch = [parse_event(json.dumps(event)) for event in CART[:3]]
        with pytest.raises(Fenced, match=f"leader of a at epoch {lease.epoch} is gone"):  # nor commit a triage batch
            a.parts.triage.handle(batch)
        assert a.parts.store.event_count() == 0 and a.parts.store.incidents() == []
        # to the consumer, the batch is one it cannot record now: held and given back (bus/_hold.py), counted
        before = REGISTRY.get_sample_value("rtem_triage_unavailable_total") or 0.0
        with pytest.raises(Unavailable, match="is gone"):
            await a._handle(batch)
        assert REGISTRY.get_sample_value("rtem_triage_unavailable_total") == before + 1
        await wait_for(lambda: a.role == "standby", 10)  # its next renewal finds the lease gone
    finally:
        await a.stop()


def test_the_standby_takes_over_within_seconds_of_the_leader_being_killed(tmp_path, nats_server, postgres_url):
    """Two `rtem run` processes; SIGKILL the leader mid-stream: the standby leads within the lease, every
    event is recorded once, and the target sees each action once."""
    import asyncio

    from bus import Bus

    # The cart fault's events span 11 s of event time: diagnosing after 8 s means the first six (5 s, which the
    # killed leader may or may not have recorded) never make an incident of their own, whoever handles them.
    env = {**os.environ, "RTEM_NATS_URL": nats_server.url, "RTEM_DATABASE_URL": postgres_url,
           "RTEM_LEADER_LEASE_S": "3", "RTEM_DIAGNOSE_AFTER_S": "8", "RTEM_VERIFY_QUIET_S": "30"}
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("w1", "w2")}

    def start(name: str) -> None:
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--topology", str(EXAMPLES / "boutique-topology.json"),
             "--no-http", "--metrics-port", "0"],
            env={**env, "RTEM_DATA_DIR": str(tmp_path / name), "RTEM_WORKER_ID": name},
            stdout=subprocess.DEVNULL, stderr=logs[name], start_new_session=True)

    async def reset_streams():  # before the workers start: resetting under a running consumer restarts it
        bus = await Bus.connect(nats_server.url)
        await bus.reset_streams()
        await bus.close()

    async def scenario():
        target = Target(fail={"shed_load"})
        bus = await Bus.connect(nats_server.url)
        await target.attach(bus.nc)
        try:
            await publish(bus, CART[:6])
            await asyncio.sleep(1)
            procs["w1"].send_signal(signal.SIGKILL)  # mid-stream
            killed = time.monotonic()
            await asyncio.to_thread(procs["w1"].wait, 10)  # gone, and its connection with it
            await publish(bus, CART[6:])
            while leader(postgres_url)[0] != "w2":
                assert time.monotonic() - killed < 15, "no takeover"
                await asyncio.sleep(0.1)
            takeover = time.monotonic() - killed
            await publish(bus, CURRENCY)
            await wait_for(lambda: incidents(postgres_url) == ["escalated", "escalated"], 90)
            # Events the killed leader took and had not acked come back after ack_wait (30 s here), after
            # their incident may have closed: they join it (docs/lifecycle.md), and none is lost.
            await wait_for(lambda: event_count(postgres_url) == len(CART) + len(CURRENCY), 60)
            assert incidents(postgres_url) == ["escalated", "escalated"], "late events joined their incident"
            return takeover, list(target.applied)
        finally:
            await bus.close()

    try:
        asyncio.run(reset_streams())
        start("w1")
        deadline = time.monotonic() + 60
        while leader(postgres_url)[0] != "w1" and time.monotonic() < deadline:  # w1 leads before w2 starts
            time.sleep(0.2)
        assert leader(postgres_url)[0] == "w1", (tmp_path / "w1.log").read_text()[-2000:]
        start("w2")
        takeover, applied = asyncio.run(scenario())
        assert takeover <= 10, f"the standby took {takeover:.1f}s to take over"
        assert len(applied) == 4 and len(set(applied)) == 4, applied
        assert event_count(postgres_url) == len(CART) + len(CURRENCY), "each event recorded once, none twice"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        for handle in logs.values():
            handle.close()


def event_count(postgres_url: str) -> int:
    with psycopg.connect(postgres_url) as conn:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def incidents(postgres_url: str) -> list[str]:
    with psycopg.connect(postgres_url) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM incidents WHERE status != 'merged' ORDER BY first_ts")]


async def test_rtem_cluster_status_names_the_leader_and_the_workers(tmp_path, nats_server, boutique, postgres_url,
                                                                    monkeypatch):
    from typer.testing import CliRunner

    from agent.cli import app

    monkeypatch.setenv("RTEM_DATABASE_URL", postgres_url)
    runner = CliRunner()
    before = runner.invoke(app, ["cluster", "status", "--json"])
    assert before.exit_code == 1 and json.loads(before.stdout)["leader"] is None, "no worker ever ran"
    a = await worker(tmp_path, nats_server, postgres_url, boutique, "a").start()
    b = await worker(tmp_path, nats_server, postgres_url, boutique, "b").start()
    try:
        view = await wait_for(lambda: (v := json.loads(runner.invoke(app, ["cluster", "status", "--json"]).stdout))
                              and v["consumer"] and v, 10)  # the leader saves its consumer's lag as it starts
        assert view["leader"]["worker"] == "a" and view["leader"]["live"]
        assert sorted((w["worker"], w["role"]) for w in view["workers"]) == [("a", "leader"), ("b", "standby")]
        assert {s["state"] for s in view["schema"]} == {"current"}
        assert view["consumer"]["lag"] == 0 and view["consumer"]["worker"] == "a"
        digests = {w["rules"]["digest"] for w in view["workers"]}
        assert digests == {a.reloader.current().digest} and all(w["rules"]["current"] for w in view["workers"]), \
            "every worker judges with the cluster's rules"
        assert view["incidents"] == []
        human = runner.invoke(app, ["cluster", "status"])
        assert human.exit_code == 0 and "leader   a (epoch 1" in human.stdout
        assert "consumer lag 0 events" in human.stdout
    finally:
        await a.stop()
        await wait_for(lambda: b.role == "leader", 10)
        view = json.loads(runner.invoke(app, ["cluster", "status", "--json"]).stdout)
        assert view["leader"]["worker"] == "b" and [w["worker"] for w in view["workers"]] == ["b"]
        await b.stop()
    after = runner.invoke(app, ["cluster", "status", "--json"])
    assert after.exit_code == 1 and not json.loads(after.stdout)["leader"]["live"]


def owner(postgres_url: str, incident_id: str) -> str | None:
    """The worker whose lease on the incident is live, if any."""
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = %s AND expires_at > EXTRACT(EPOCH FROM "
                           "clock_timestamp())", [f"incident:{incident_id}"]).fetchone()
    return row[0] if row else None


async def approve_through(service: Service, token: str, incident_id: str, index: int):
    async with httpx.AsyncClient(base_url=service.http_url, headers={"Authorization": f"Bearer {token}"}) as api:
        return await api.post(f"/api/v1/incidents/{incident_id}/actions/{index}/approve",
                              json={"reason": "node-6 is unhealthy"})


def approver_token(postgres_url: str) -> str:
    from agent.tokens import TokenStore

    tokens = TokenStore(postgres_url)
    token, _ = tokens.create("ana", "approver")
    tokens.close()
    return token


@contextlib.asynccontextmanager
async def an_incident_awaiting_approval(tmp_path, nats_server, bus, boutique, postgres_url):
    """Workers a (leader) and b, both serving HTTP, and an incident on node-6 waiting for the approval of
    its drain_host: yields (workers by name, the incident's row, its owner's name, an approver's token,
    the target)."""
    target = Target()
    await target.attach(bus.nc)
    token = approver_token(postgres_url)
    a = await worker(tmp_path, nats_server, postgres_url, boutique, "a", http_port=0).start()
    b = await worker(tmp_path, nats_server, postgres_url, boutique, "b", http_port=0).start()
    try:
        await publish(bus, [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)])
        row = await wait_for(lambda: (rows := a.parts.store.incidents()) and rows[0]["status"] == "awaiting_approval"
                             and rows[0], 40)
        yield {"a": a, "b": b}, row, owner(postgres_url, row["id"]), token, target
    finally:
        await b.stop()
        await a.stop()


def drain_index(row) -> int:
    [drain] = [x for x in row["actions"] if x["type"] == "drain_host"]
    return drain["index"]


async def test_an_approval_sent_through_one_worker_runs_once_on_the_worker_that_owns_the_incident(
        tmp_path, nats_server, bus, boutique, postgres_url):
    async with an_incident_awaiting_approval(tmp_path, nats_server, bus, boutique, postgres_url) as (
            workers, row, holder, token, target):
        assert holder in workers and workers[holder].ownership.owns(row["id"]), "one worker owns it while it waits"
        other = workers["b" if holder == "a" else "a"]
        assert not other.ownership.owns(row["id"])
        decided = await approve_through(other, token, row["id"], drain_index(row))  # not through its owner
        assert decided.status_code == 200, decided.text
        await wait_for(lambda: any(action == "drain_host" for _, action, _ in target.applied), 30)
        assert [action for _, action, _ in target.applied].count("drain_host") == 1
        assert workers["b"].parts.triage.stats.events == 0, "the standby consumed nothing"
        audit = workers["a"].parts.audit
        [record] = audit.records(incident_id=row["id"], kind="approval.decided")
        assert record.decision["by"] == "ana"
        # the target applies the step before its reply reaches the worker that records it
        [executed] = await wait_for(lambda: [r for r in audit.records(incident_id=row["id"], kind="action.executed")
                                             if " drain_host on " in r.inputs["action"]], 15)
        assert executed.inputs["worker"] == holder, "it ran on the worker that owns the incident"


async def test_an_incident_whose_owner_stopped_renewing_is_taken_over_and_its_old_owner_is_fenced(
        tmp_path, nats_server, bus, boutique, postgres_url):
    from agent.cluster import Fenced

    async with an_incident_awaiting_approval(tmp_path, nats_server, bus, boutique, postgres_url) as (
            workers, row, first, token, target):
        old, new = workers[first], workers["b" if first == "a" else "a"]
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # as if its owner was paused past its lease
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = %s", [f"incident:{row['id']}"])
        await wait_for(lambda: new.ownership.owns(row["id"]), 15)  # the other worker takes it over
        await wait_for(lambda: not old.ownership.owns(row["id"]), 10)  # its old owner finds it lost
        with pytest.raises(Fenced):
            old.parts.ledger.start(f"{row['id']}/9/do", row["id"], 9, "do", "restart_instance", "node-6", {})
        assert (await approve_through(old, token, row["id"], drain_index(row))).status_code == 200
        await wait_for(lambda: any(action == "drain_host" for _, action, _ in target.applied), 30)
        assert [action for _, action, _ in target.applied].count("drain_host") == 1
        assert old.parts.ledger.get(f"{row['id']}/9/do") is None
