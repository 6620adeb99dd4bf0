"""rtem run's own NATS server: one per data directory, ever; gone with rtem; stopped last.

Real processes throughout: `python -m agent run` with its embedded nats-server, killed with SIGKILL or
stopped with SIGTERM to its whole process group, as a crash, systemd or Ctrl-C in a terminal would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.audit import AuditLog
from agent.store import IncidentStore
from bus import AUDIT, Bus, BusSettings, EmbeddedNats
from tests.conftest import EXAMPLES
from tests.live import anomaly, sample, stop_process, wait_for

pytestmark = pytest.mark.integration

TOPOLOGY = EXAMPLES / "boutique-topology.json"


class RtemRun:
    """`rtem run` as a real process in its own session (so the test can signal its process group)."""

    def __init__(self, data_dir: Path, log: Path, **env):
        self.data_dir = data_dir
        self.log = log
        self.env = {**os.environ, "RTEM_DATA_DIR": str(data_dir), "RTEM_DIAGNOSE_AFTER_S": "5",
                    **{k: str(v) for k, v in env.items()}}
        self.env.pop("RTEM_NATS_URL", None)
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> RtemRun:
        """Start it; without HTTP unless `args` say otherwise (`--http-port 0`: any free port)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as stderr:
            self.proc = subprocess.Popen([*self.command(), *(args or ("--no-http",))], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        return self

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "agent", "run", "--topology", str(TOPOLOGY), "--metrics-port", "0"]

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def ready(self, starts: int = 1) -> str:
        """Wait for this many `rtem run` starts to have said where their bus is; the bus URL."""
        await wait_for(lambda: self.stderr().count("rtem run: bus") >= starts or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, f"rtem run exited with {self.proc.returncode}:\n{self.stderr()}"
        return (self.data_dir / "nats.url").read_text().strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)


def nats_servers_on(data_dir: Path) -> list[int]:
    """Pids of the nats-server processes whose JetStream store is in `data_dir` (read from /proc)."""
    store = (data_dir / "nats" / "jetstream").resolve()
    pids = []
    for proc in psutil.process_iter(["name"]):
        try:
            cmdline = proc.cmdline()
            if proc.status() == psutil.STATUS_ZOMBIE or "nats-server" not in Path(cmdline[0]).name:
                continue
            sd = cmdline[cmdline.index("-sd") + 1]
            if (Path(proc.cwd()) / sd).resolve() == store:
                pids.append(proc.pid)
        except (psutil.Error, ValueError, IndexError):
            continue
    return pids


def stop_servers_on(data_dir: Path) -> None:
    """Whatever a failing run left behind, so it does not outlive the test."""
    for pid in nats_servers_on(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def producer_settings(data_dir: Path) -> BusSettings:
    """How a producer connects to `rtem run`'s server: with the producer's credentials, when it has them."""
    path = data_dir / "nats" / "credentials.json"
    if not path.is_file():
        return BusSettings()
    from bus import NatsAuth

    return BusSettings(auth=NatsAuth(user="producer", password=json.loads(path.read_text())["producer"]))


async def publish(url: str, data_dir: Path, events: list[dict]) -> None:
    """Publish and wait for JetStream's acks: after this, every event is accepted."""
    producer = await Bus.connect(url, producer_settings(data_dir), name="test-producer")
    try:
        report = await producer.publish_lines([json.dumps(e).encode() for e in events])
        assert report.published + report.duplicates == len(events)
    finally:
        await producer.close()


def stored_events(data_dir: Path) -> int:
    db = data_dir / "rtem.db"
    if not db.exists():
        return 0
    store = IncidentStore(db, readonly=True)
    try:
        return store.event_count()
    except sqlite3.OperationalError:  # the service is still creating its tables
        return 0
    finally:
        store.close()


async def test_kill_9_then_restart_keeps_one_server_and_loses_no_accepted_event(tmp_path):
    data = tmp_path / "data"
    # what the killed process took and never acked comes back after ack_wait: 5 s rather than 30 keeps the wait short
    rtem = RtemRun(data, tmp_path / "rtem.err", RTEM_ACK_WAIT_S=5).start()
    try:
        url = await rtem.ready()
        await publish(url, data, [sample(f"a{i}", "cartservice-0", i) for i in range(3000)])
        rtem.kill()  # most of them are accepted but not yet consumed
        rtem.start()
        url = await rtem.ready(starts=2)
        assert len(nats_servers_on(data)) == 1, f"servers on one data directory: {nats_servers_on(data)}"
        await publish(url, data, [sample(f"b{i}", "cartservice-0", 3000 + i) for i in range(1000)])
        await wait_for(lambda: stored_events(data) >= 4000, 90, message=lambda: (stored_events(data), rtem.stderr()))
        assert stored_events(data) == 4000
        assert len(nats_servers_on(data)) == 1
    finally:
        rtem.stop()
        stop_servers_on(data)
    assert nats_servers_on(data) == [], "rtem run stopped its server"


async def test_a_server_left_running_on_the_data_directory_is_stopped_cleanly_first(tmp_path):
    """As on a system without a parent-death signal: a server outlived its rtem, holding accepted events."""
    data = tmp_path / "data"
    orphan_dir = data / "nats"
    orphan_dir.mkdir(parents=True)
    leftover = EmbeddedNats(orphan_dir)
    (orphan_dir / "ports").mkdir()
    (orphan_dir / "nats.conf").write_text("")
    orphan = subprocess.Popen(leftover.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    rtem = RtemRun(data, tmp_path / "rtem.err")
    try:
        ports = await wait_for(lambda: list((orphan_dir / "ports").glob("*.ports")), 30)
        orphan_url = json.loads(ports[0].read_text())["nats"][0]
        bus = await Bus.connect(orphan_url)
        await bus.ensure_streams()
        await bus.close()
        await publish(orphan_url, data, [sample(f"o{i}", "cartservice-0", i) for i in range(500)])
        assert nats_servers_on(data) == [orphan.pid]
        rtem.start()
        await rtem.ready()
        assert orphan.wait(5) == 0, "the leftover server was stopped with SIGTERM (a clean shutdown)"
        assert len(nats_servers_on(data)) == 1 and nats_servers_on(data) != [orphan.pid]
        await wait_for(lambda: stored_events(data) >= 500, 60, message=lambda: (stored_events(data), rtem.stderr()))
    finally:
        rtem.stop()
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        stop_servers_on(data)


async def test_a_second_rtem_run_on_the_same_data_directory_is_refused(tmp_path):
    data = tmp_path / "data"
    first = RtemRun(data, tmp_path / "first.err").start()
    try:
        await first.ready()
        second = subprocess.run([*first.command(), "--no-http"], env=first.env, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "in use by another rtem" in errors[0], second.stderr
        assert f"pid {first.proc.pid}" in errors[0]
        assert "Traceback" not in second.stderr
        assert len(nats_servers_on(data)) == 1
        assert first.proc.poll() is None, "the first one runs on"
    finally:
        first.stop()
        stop_servers_on(data)


async def test_sigterm_to_the_process_group_stops_cleanly_and_copies_every_audit_record(tmp_path):
    data = tmp_path / "data"
    rtem = RtemRun(data, tmp_path / "rtem.err").start("--http-port", "0")
    try:
        url = await rtem.ready()
        await publish(url, data, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)]
                      + [sample(f"s{i}", "cartservice-0", 10 + i) for i in range(200)])
        await wait_for(lambda: stored_events(data) >= 210, 30)
        os.killpg(rtem.proc.pid, signal.SIGTERM)  # as systemd does, and a terminal on Ctrl-C (SIGINT)
        assert rtem.proc.wait(60) == 0, rtem.stderr()
        assert "Traceback" not in rtem.stderr(), rtem.stderr()
        assert nats_servers_on(data) == [], "rtem stopped its server"
    finally:
        rtem.stop()
        stop_servers_on(data)

    records = AuditLog(data / "rtem.db").records()
    assert records, "the run made decision records"
    with EmbeddedNats(data / "nats") as server:  # the same JetStream store, read after rtem stopped
        bus = await Bus.connect(server.url)
        try:
            on_stream = (await bus.js.stream_info(AUDIT)).state.messages
        finally:
            await bus.close()
    assert on_stream == len(records), f"{on_stream} audit records on the AUDIT stream, {len(records)} in the log"


async def test_the_server_dies_with_its_parent(tmp_path):
    """A process that starts a server and is killed takes the server with it (Linux: a parent-death signal)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    script = ("import sys, time; from bus import EmbeddedNats; "
              "EmbeddedNats(sys.argv[1]).start(); print('up', flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data" / "nats")], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert parent.stdout.readline() == b"up\n"
        assert len(nats_servers_on(tmp_path / "data")) == 1
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while nats_servers_on(tmp_path / "data") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert nats_servers_on(tmp_path / "data") == []
    finally:
        if parent.poll() is None:
            parent.kill()
        stop_servers_on(tmp_path / "data")


async def test_a_bus_whose_server_is_gone_closes_at_once(tmp_path):
    """rtem stopping after its NATS server died must not hang on draining a connection that cannot drain."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        bus = await Bus.connect(server.url)
        await bus.ensure_streams()
        server.kill()
        await asyncio.sleep(0.5)  # the client notices and starts reconnecting
        started = time.monotonic()
        await asyncio.wait_for(bus.close(), 15)
        assert bus.nc.is_closed and time.monotonic() - started < 12
    finally:
        server.cleanup()
