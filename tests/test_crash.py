"""Crash safety: `kill -9` the service before, during and after an action; restart the NATS server.

The service runs as a real subprocess (`python -m agent run`) against the test's nats-server. After
every crash it is started again on the same data directory: every incident must complete, and the
target must never apply a step twice.
"""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from agent.ledger import Ledger
from agent.store import IncidentStore
from agent.triage import Triage
from bus import EVENTS, TRIAGE, Bus, BusSettings, EmbeddedNats
from rules import Correlator, Detector, load_detections
from tests.conftest import EXAMPLES
from tests.live import Target, anomaly, publish, sample, stop_process, wait_for

pytestmark = pytest.mark.integration

TOPOLOGY = EXAMPLES / "boutique-topology.json"


class ServiceProcess:
    def __init__(self, tmp_path, nats_url, **env):
        self.env = {**os.environ, "RTEM_DATA_DIR": str(tmp_path / "data"), "RTEM_NATS_URL": nats_url,
                    "RTEM_DIAGNOSE_AFTER_S": "5", "RTEM_VERIFY_QUIET_S": "30", "RTEM_ACK_WAIT_S": "2",
                    **{k: str(v) for k, v in env.items()}}
        self.db = tmp_path / "data" / "rtem.db"
        self.proc = None
        self._last_err = ""

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--topology", str(TOPOLOGY),
                                      "--metrics-port", "0"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        return self

    def stderr(self):
        """What the last process said (read after it was killed), for failure messages."""
        return self._last_err

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._last_err = self.proc.stderr.read().decode(errors="replace")[-3000:]

    def stop(self):
        stop_process(self.proc, 10)

    def incident(self):
        if not self.db.exists():
            return None
        store = IncidentStore(self.db, readonly=True)
        try:
            rows = store.incidents()
            return rows[0] if rows else None
        except sqlite3.OperationalError:  # the service is still creating its tables
            return None
        finally:
            store.close()

    def status(self):
        return (self.incident() or {}).get("status")


class SlowTarget(Target):
    """Answers after `delay` seconds, so a test can kill the service while a call is in flight."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.received: list[str] = []

    async def _on_command(self, msg):
        if msg.subject.startswith("rtem.cmd.notify_oncall"):
            return
        self.received.append(msg.subject)
        await asyncio.sleep(self.delay)
        await super()._on_command(msg)


async def recover(bus, start=20):
    await publish(bus, [sample(f"s{start}-{i}", "cartservice-0", start + i * 10) for i in range(8)])


@pytest.mark.parametrize("moment", ["before", "during", "after"])
async def test_kill_at_any_moment_then_restart_completes_once(tmp_path, nats_server, bus, moment):
    target = SlowTarget(delay=1.5 if moment == "during" else 0)
    await target.attach(bus.nc)
    service = ServiceProcess(tmp_path, nats_server.url).start()
    try:
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        if moment == "before":
            await wait_for(lambda: service.status() in ("diagnosing", "verifying") or target.requests, 30, 0.01)
        elif moment == "during":
            await wait_for(lambda: target.received, 30, 0.01)  # the request is in flight, unanswered
        else:
            await wait_for(lambda: target.applied, 30, 0.01)
        service.kill()
        service.start()
        await wait_for(lambda: service.status() == "verifying", 30, message=lambda: (service.status(), service.stderr()))
        await recover(bus)
        await wait_for(lambda: service.status() == "resolved", 30)
        keys = [key for key, _, _ in target.applied]
        assert sorted(keys) == sorted(set(keys)), f"a step was applied twice: {keys}"
        assert {a for _, a, _ in target.applied} == {"restart_instance", "scale_out"}
    finally:
        service.stop()


async def approve_while_down(service, bus):
    """A CPU fault on a host: drain_host is high risk and waits for a person, who approves it while
    the service is down (killed)."""
    await publish(bus, [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)])
    row = await wait_for(lambda: service.status() == "awaiting_approval" and service.incident(), 30)
    service.kill()
    drain = next(a for a in row["actions"] if a["verdict"] == "require_approval")
    Ledger(service.db).decide(row["id"], drain["index"], True, "alice")


async def test_an_approval_given_while_the_service_is_down_is_honoured(tmp_path, nats_server, bus):
    target = Target()
    await target.attach(bus.nc)
    service = ServiceProcess(tmp_path, nats_server.url).start()
    try:
        await approve_while_down(service, bus)
        service.start()
        await wait_for(lambda: any(a == "drain_host" for _, a, _ in target.applied), 30)
    finally:
        service.stop()


async def test_an_expired_approval_does_not_run(tmp_path, nats_server, bus):
    target = Target()
    await target.attach(bus.nc)
    service = ServiceProcess(tmp_path, nats_server.url, RTEM_APPROVAL_TTL_S=1).start()
    try:
        await approve_while_down(service, bus)
        await asyncio.sleep(1.5)  # the approval ages past its lifetime while nobody executes it
        service.start()
        row = await wait_for(lambda: service.status() in ("escalated", "resolved", "verifying") and service.incident(), 30)
        assert not any(a == "drain_host" for _, a, _ in target.applied)
        drain = next(a for a in row["actions"] if a["type"] == "drain_host")
        assert drain["status"] == "expired"
    finally:
        service.stop()


async def test_restarting_the_nats_server_mid_stream_loses_nothing(tmp_path, boutique):
    from agent.config import Settings
    from agent.run import Service

    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    service = None
    try:
        settings = Settings(data_dir=tmp_path / "data", nats_url=server.url, diagnose_after_s=10_000)
        service = await Service(settings, boutique, poll_s=0.05).start()
        producer = await Bus.connect(server.url)
        await publish(producer, [sample(f"e{i}", "cartservice-0", i) for i in range(500)])
        server.stop()
        server.start()  # same port and data directory: clients reconnect
        await wait_for(lambda: producer.nc.is_connected, 60)
        await publish(producer, [sample(f"e{i}", "cartservice-0", i) for i in range(500, 1000)])
        await wait_for(lambda: service.parts.store.event_count() == 1000, 90)
        await producer.close()
    finally:
        if service:
            await service.stop()
        server.cleanup()


async def test_a_batch_redelivered_after_its_incident_closed_joins_that_incident(tmp_path, nats_server, boutique):
    """The chaos benchmark's duplicated incident, on a real JetStream consumer. A killed process held
    the fault's later anomalies unacked; the restarted one gets the newer events first, the redelivery
    only after the ack wait, and by then the incident was remediated and closed (the service loop does
    that between batches). The late anomalies must join the closed incident, not open a second one."""
    bus = await Bus.connect(nats_server.url, BusSettings(ack_wait_s=2.0))
    await bus.reset_streams()

    def start():  # a process: triage restored from the store on disk
        store = IncidentStore(tmp_path / "rtem.db")
        return Triage(store, Detector(load_detections(), boutique), Correlator(boutique, gap_s=300)), store

    try:
        triage, store = start()
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(4)])
        await bus.consume(triage, until_drained=True)
        [incident] = [row["id"] for row in store.incidents()]
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(4, 8)])
        held = await bus.js.pull_subscribe_bind(TRIAGE, stream=EVENTS)
        assert len(await held.fetch(4, timeout=5)) == 4  # delivered to the process that is then killed
        await held.unsubscribe()
        store.close()

        triage, store = start()
        batches = []

        async def handle(events):  # the new process: triage, then the service loop between batches
            batches.append([e.id for e in events])
            triage.handle(events)
            if triage.detector.watermark >= 60 and store.incident(incident)["status"] != "resolved":
                store.set_status(incident, "resolved")
                triage.correlator.release(incident)

        await publish(bus, [sample(f"s{i}", "emailservice-0", 8 + i) for i in range(60)])
        await bus.consume(handle, until_drained=True)
        late = [i for i, ids in enumerate(batches) if "a4" in ids]
        assert late and any(f"s{59}" in ids for ids in batches[:late[0]]), f"not redelivered late: {batches}"
        assert [row["id"] for row in store.incidents()] == [incident], "one fault, one incident"
        assert store.incident(incident)["event_count"] == 8
        store.close()
    finally:
        await bus.close()
