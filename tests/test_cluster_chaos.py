"""The chaos suite against a cluster: three `rtem run` worker processes on one PostgreSQL database and a
three-server JetStream cluster (streams with three copies), SIGKILLed, SIGSTOPped and starved of a NATS
server while incidents go through them. Nothing may be lost, no fault may become two incidents, and no
action may run twice; an incident whose worker dies is finished by another (docs/deployment.md).

The harness is tests/cluster_procs.py; benchmarks/cluster.py repeats the kills and measures.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from bus import EVENTS, Bus, BusSettings
from tests.cluster_procs import (CountingTarget, Fault, WorkerCluster, faults, fresh_database, integrity, publish,
                                 samples, settle, wait_async)
from tests.live import anomaly
from tests.nats_cluster import NatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

WORKERS = ("w1", "w2", "w3")
LEASE_S = 3.0  # the leader's and each incident's: a dead worker's work moves on after at most ~4 s
ENV = {"RTEM_ACK_WAIT_S": "2"}  # events a killed leader held come back after 2 s (not 30): before a new leader
FENCED = re.compile(r"Fenced|is gone|lost incident|lost the leader lease|does not own")


@pytest.fixture
def nats_cluster(tmp_path):
    running = NatsCluster(tmp_path / "nats")
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
async def cluster_bus(nats_cluster):
    """The producer's and the target's connection, with the streams made (three copies) before any worker."""
    bus = await Bus.connect(nats_cluster.url, BusSettings(replicas=3))
    await bus.ensure_streams()
    yield bus
    await bus.close()


@pytest.fixture
def database_url(postgres_server_url):
    """A database of this test's own (not a schema: see `fresh_database`)."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def workers(tmp_path, nats_cluster, database_url):
    with WorkerCluster(tmp_path / "workers", nats_cluster.url, database_url, replicas=3, lease_s=LEASE_S,
                       env=ENV) as running:
        yield running


async def start(cluster: WorkerCluster, names=WORKERS) -> None:
    def started():
        cluster.start(*names)
        cluster.wait_ready(names)

    await asyncio.to_thread(started)


def assert_nothing_lost_or_doubled(report: dict, cluster: WorkerCluster) -> None:
    problem = f"{json.dumps(report)}\n{cluster.logs()}"
    assert report["events_sent"] > 0 and report["events_lost"] == 0, problem
    assert report["events_recorded_twice"] == 0, problem
    assert report["incidents_duplicated"] == 0 and report["faults_undetected"] == 0, problem
    assert report["actions_executed_twice"] == 0, problem


async def test_a_standby_takes_triage_over_within_seconds_when_the_leader_is_killed_mid_stream(workers, cluster_bus):
    target = CountingTarget(fail={"shed_load"})  # scale_out, shed_load fails, scale_out compensated: escalated
    await target.attach(cluster_bus.nc)
    await start(workers)
    planted = faults("k", 3)
    stream = [e for f in planted for e in f.events]
    await publish(cluster_bus, stream[:15])  # the first fault, and half of the second
    await wait_async(lambda: workers.event_count()[0] >= 5, 30, workers.logs)
    old = workers.leader().holder
    killed = workers.kill(old)
    await publish(cluster_bus, stream[15:])
    new = await wait_async(lambda: (lease := workers.leader()).live and lease.holder != old and lease, 15,
                           workers.logs)
    takeover = time.monotonic() - killed
    assert takeover <= 10, f"the leader lease was taken over after {takeover:.1f}s"
    await wait_async(lambda: workers.all_final(len(planted)), 90, workers.logs)

    await settle(workers, [e["id"] for e in stream])
    report = integrity(workers, [e["id"] for e in stream], planted, target)
    assert_nothing_lost_or_doubled(report, workers)
    assert workers.event_count() == (len(stream), len(stream)), "every event recorded exactly once"
    assert [r["status"] for r in workers.incidents()] == ["escalated"] * 3
    assert len(target.applied) == 6, f"each incident's scale_out and its compensation, once: {target.applied}"
    assert new.holder in workers.running()


async def test_an_incident_whose_worker_is_killed_before_during_or_after_its_action_is_finished_by_another(
        workers, cluster_bus, database_url, monkeypatch):
    from typer.testing import CliRunner

    from agent.cli import app

    monkeypatch.setenv("RTEM_DATABASE_URL", database_url)
    cli = CliRunner()
    target = CountingTarget()
    await target.attach(cluster_bus.nc)
    await start(workers)
    before, during, after = faults("o", 3)
    sent: list[str] = []

    async def incident_of(fault: Fault) -> str:
        return await wait_async(lambda: workers.incident_of(fault.events[0]["id"]), 30, workers.logs)

    async def send(events):
        await publish(cluster_bus, events)
        sent.extend(e["id"] for e in events)

    # Before: the kill switch holds the incident's actions; its owner dies; execution resumes.
    assert cli.invoke(app, ["pause", "--by", "chaos"]).exit_code == 0
    target.fail = {"shed_load"}
    await send(before.events)
    first = await incident_of(before)
    await wait_async(lambda: workers.status(first) == "paused", 30, workers.logs)
    owner = workers.owner(first)
    assert owner.live, f"no live incident:{first} lease: {workers.leases()}"
    workers.kill(owner.holder)
    await wait_async(lambda: not ((lease := workers.owner(first)).live and lease.holder == owner.holder), 15)
    assert not target.requests, "nothing ran while paused"
    assert cli.invoke(app, ["resume", "--by", "chaos"]).exit_code == 0  # a paused incident is taken when it can go on
    taken = await asyncio.to_thread(workers.wait_owner, first, other_than=owner.holder, timeout=15)
    assert taken.epoch > owner.epoch
    await wait_async(lambda: workers.status(first) == "escalated", 60, workers.logs)
    assert len(target.keys_of(first)) == 2, "scale_out and its compensation, once each, after the resume"
    workers.start(owner.holder)  # back, as systemd would: three workers for the next kill

    # During: the target applies scale_out and holds its answer; the owner dies waiting for it.
    target.hold_s = {"scale_out/do": 5.0}
    await send(during.events)
    second = await incident_of(during)
    await wait_async(lambda: target.holding and target.keys_of(second), 30, workers.logs)
    owner = workers.owner(second)
    assert owner.live
    workers.kill(owner.holder)
    await asyncio.to_thread(workers.wait_owner, second, other_than=owner.holder, timeout=15)
    await wait_async(lambda: workers.status(second) == "escalated", 60, workers.logs)
    [held] = [k for k in target.keys_of(second) if k.endswith("/do") and target.applied[k][0] == "scale_out"]
    assert target.per_key[held] >= 2, "the new owner sent the step found `started` again, with its key"
    workers.start(owner.holder)

    # After: the actions succeeded and the incident waits for recovery; its owner dies; another verifies it.
    target.hold_s, target.fail = {}, set()
    await send(after.events)
    third = await incident_of(after)
    await wait_async(lambda: workers.status(third) == "verifying", 30, workers.logs)
    owner = workers.owner(third)
    assert owner.live
    applied = set(target.keys_of(third))
    workers.kill(owner.holder)
    await asyncio.to_thread(workers.wait_owner, third, other_than=owner.holder, timeout=15)
    quiet = samples("q", "emailservice-0", after.start_s + 12, 12, every_s=5)  # 60 s of quiet event time
    await send(quiet)
    await wait_async(lambda: workers.status(third) == "resolved", 60, workers.logs)
    assert set(target.keys_of(third)) == applied, "nothing ran again after the owner died"
    assert all(target.per_key[key] == 1 for key in applied), "a step already done was not even sent again"

    await settle(workers, sent)
    report = integrity(workers, sent, [before, during, after], target)
    assert_nothing_lost_or_doubled(report, workers)


async def test_a_worker_paused_past_its_lease_can_no_longer_write_or_act(workers, cluster_bus):
    target = CountingTarget(fail={"shed_load"}, hold_s={"scale_out/do": 3 * LEASE_S})
    await target.attach(cluster_bus.nc)
    await start(workers)
    [fault] = faults("p", 1)
    await publish(cluster_bus, fault.events)
    incident = await wait_async(lambda: workers.incident_of(fault.events[0]["id"]), 30, workers.logs)
    await wait_async(lambda: target.holding and target.keys_of(incident), 30, workers.logs)
    owner = workers.owner(incident)
    led = workers.leader()
    assert owner.live
    workers.pause(owner.holder)  # in the middle of its scale_out: it waits for the answer
    taken = await asyncio.to_thread(workers.wait_owner, incident, other_than=owner.holder, timeout=15)
    assert taken.epoch > owner.epoch
    if led.holder == owner.holder:
        await asyncio.to_thread(workers.wait_leader, other_than=owner.holder, timeout=15)
    await wait_async(lambda: not target.holding, 3 * LEASE_S + 5)  # the answer is waiting in its socket
    workers.resume(owner.holder)
    await wait_async(lambda: workers.status(incident) == "escalated", 60, workers.logs)
    await asyncio.sleep(LEASE_S)  # its next renewal, and the answer it read, have met the fence by now

    paused = workers[owner.holder]
    assert paused.running, "it stands by, it does not crash"
    log = paused.text()
    assert FENCED.search(log), f"{owner.holder} never said it lost its lease:\n{paused.tail(40)}"
    held = sorted(name for name, lease in workers.leases().items()
                  if lease.holder == owner.holder and lease.live and not name.startswith("worker:"))
    assert held == [], f"{owner.holder} holds no lease but its heartbeat after it lost them: {held}"
    await settle(workers, fault.event_ids)
    report = integrity(workers, fault.event_ids, [fault], target)
    assert_nothing_lost_or_doubled(report, workers)
    assert len(target.applied) == 2, "scale_out and its compensation, once each"


async def test_killing_one_nats_server_of_three_mid_stream_loses_nothing(workers, cluster_bus, nats_cluster):
    target = CountingTarget(fail={"shed_load"})
    await target.attach(cluster_bus.nc)
    await start(workers)
    planted = faults("n", 3)
    stream = [e for f in planted for e in f.events]
    await publish(cluster_bus, stream[:15])
    await wait_async(lambda: workers.event_count()[0] >= 5, 30, workers.logs)
    info = await cluster_bus.js.stream_info(EVENTS)
    nats_cluster.kill(info.cluster.leader)  # the stream's leader: the harshest one to lose
    await publish(cluster_bus, stream[15:])  # while a new stream leader is elected; lost acks are retried
    await wait_async(lambda: workers.all_final(len(planted)), 90, workers.logs)

    await settle(workers, [e["id"] for e in stream])
    report = integrity(workers, [e["id"] for e in stream], planted, target)
    assert_nothing_lost_or_doubled(report, workers)
    assert workers.event_count() == (len(stream), len(stream))
    assert [r["status"] for r in workers.incidents()] == ["escalated"] * 3
    assert len(target.applied) == 6
    assert not workers.exited(), workers.exited()


async def test_an_approval_sent_through_one_worker_runs_once_on_the_worker_that_owns_the_incident(
        tmp_path, nats_cluster, cluster_bus, database_url):
    from agent.tokens import TokenStore

    target = CountingTarget()
    await target.attach(cluster_bus.nc)
    tokens = TokenStore(database_url)
    token, _ = tokens.create("ana", "approver")
    tokens.close()
    with WorkerCluster(tmp_path / "workers", nats_cluster.url, database_url, replicas=3, lease_s=LEASE_S, env=ENV,
                       http=True) as workers:
        await start(workers)
        fault = Fault("h", "node-6", 0, instances=1,
                      events=[anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)])
        await publish(cluster_bus, fault.events)
        incident = await wait_async(lambda: workers.incident_of("h0"), 30, workers.logs)
        await wait_async(lambda: workers.status(incident) == "awaiting_approval", 40, workers.logs)
        owner = workers.owner(incident)
        assert owner.live, f"no live incident:{incident} lease: {workers.leases()}"
        via = next(name for name in WORKERS if name != owner.holder)
        [actions] = workers.query("SELECT actions FROM incidents WHERE id = %s", [incident])[0]
        [drain] = [a for a in json.loads(actions) if a["type"] == "drain_host"]
        url = await asyncio.to_thread(workers[via].http_url)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            decided = await api.post(f"/api/v1/incidents/{incident}/actions/{drain['index']}/approve",
                                     json={"reason": "node-6 is unhealthy"})
        assert decided.status_code == 200, decided.text
        await wait_async(lambda: [a for a, _, _ in target.applied.values()].count("drain_host") == 1, 30,
                         workers.logs)
        went_on = re.compile(rf"incident {re.escape(incident)}: (verifying|resolved|escalated)")
        await wait_async(lambda: went_on.search(workers[owner.holder].text()), 20, workers.logs)
        assert not any(went_on.search(workers[name].text()) for name in WORKERS if name != owner.holder), \
            "only the owner went on with the incident"
        assert workers.owner(incident).holder in (owner.holder, ""), "it kept the incident (or closed it)"
        executed = [json.loads(inputs) for [inputs] in workers.query(
            "SELECT inputs FROM audit WHERE incident_id = %s AND kind = 'action.executed'", [incident])]
        assert [e["worker"] for e in executed if " drain_host on " in e["action"]] == [owner.holder], \
            "the audit log names the owner as the worker that ran it"
        await asyncio.sleep(1)
        assert [a for a, _, _ in target.applied.values()].count("drain_host") == 1
        assert all(n == 1 for n in target.per_key.values()), target.per_key


async def test_workers_reconnect_after_postgresql_restarts_and_nothing_is_lost_or_run_twice(tmp_path, nats_cluster,
                                                                                            cluster_bus):
    """A PostgreSQL server of the test's own (the machine's is not ours to stop) goes down for longer than the
    leases while three workers drive incidents and events keep coming; when it is back they reconnect, a
    worker leads again, and every incident completes with each action once."""
    from tests.postgres import own_server
    from tests.test_postgres_restart import start as start_postgres
    from tests.test_postgres_restart import stop as stop_postgres

    target = CountingTarget(fail={"shed_load"})
    await target.attach(cluster_bus.nc)
    with own_server() as server, \
            WorkerCluster(tmp_path / "workers", nats_cluster.url, server.get_uri(), replicas=3, lease_s=LEASE_S,
                          env=ENV) as workers:
        await start(workers)
        planted = faults("p", 3)
        stream = [e for f in planted for e in f.events]
        await publish(cluster_bus, stream[:15])
        await wait_async(lambda: workers.event_count()[0] >= 5, 30, workers.logs)
        await asyncio.to_thread(stop_postgres, server)
        await publish(cluster_bus, stream[15:])  # accepted by JetStream while the database is down
        await asyncio.sleep(2 * LEASE_S)  # every lease lapses
        await asyncio.to_thread(start_postgres, server)
        await wait_async(lambda: workers.leader().live, 60, workers.logs)
        # The events the outage caught need not come back in the order they were published (a leader that stops
        # leading gives back what it held; what it had in flight comes back after ack_wait), so a fault may
        # be diagnosed before all its anomalies are back: as one instance
        # (restart, scale out: nothing fails) rather than its service (shed_load fails: escalated). Such an
        # incident verifies once it acted, which waits for quiet event time after that: these samples.
        await wait_async(lambda: workers.all_final(len(planted), also=("verifying",)), 120, workers.logs)
        quiet = samples("q", "emailservice-0", planted[-1].start_s + 12, 12, every_s=5)
        await publish(cluster_bus, quiet)
        await wait_async(lambda: workers.all_final(len(planted)), 60, workers.logs)
        sent = [e["id"] for e in stream + quiet]
        await settle(workers, sent)
        report = integrity(workers, sent, planted, target)
        assert_nothing_lost_or_doubled(report, workers)
        assert workers.event_count() == (len(sent), len(sent)), "every event recorded exactly once"
        assert sorted(workers.running()) == list(WORKERS), "no worker died of the outage"
