"""Several `rtem run` worker processes on one PostgreSQL database and one NATS cluster, for the cluster chaos
tests (tests/test_cluster_chaos.py) and benchmarks/cluster.py.

    with WorkerCluster(tmp_path, nats_url, database_url, replicas=3) as cluster:
        cluster.start("w1", "w2", "w3")
        cluster.wait_ready()
        old = cluster.leader().holder
        cluster.kill(old)                                   # SIGKILL, as a machine dying would
        cluster.wait_leader(other_than=old, timeout=10)
        cluster.restart(old)

Each worker is `python -m agent run --topology T --no-http --metrics-port 0` (or `--http-port 0`) with its own
RTEM_DATA_DIR and RTEM_WORKER_ID, the shared RTEM_NATS_URL and RTEM_DATABASE_URL, short waits, and whatever
extra environment the caller gives (the LLM settings, RTEM_WORKER_CONCURRENCY…). Its stdout and stderr go
to `<directory>/<name>.log`, each life marked with a `--- start N` line. Every worker runs in a session of
its own, and `close()` (or leaving the `with`) kills each one's process group, stopped ones too, so no
process outlives the test; an `atexit` hook does the same for a benchmark interrupted with Ctrl-C.

Who leads and who owns each incident is read from the `leases` table (agent/cluster): the `leader` row,
and one `incident:<incident id>` row per incident while it is active (dropped once it is final).

Also here: `CountingTarget`, which answers rtem's commands like a real system (applies an idempotency
key once, answers a repeat from memory) and can hold an action's reply to make it slow; `Fault`, a
disruption on one service of the boutique topology as anomaly events; `fresh_database()`, a PostgreSQL
database of the run's own; and `integrity()`, the figures that must be 0 after any chaos (events lost,
incidents duplicated, actions executed twice).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.live import anomaly, sample, wait_until

ROOT = Path(__file__).resolve().parent.parent
BOUTIQUE = ROOT / "agent" / "examples" / "boutique-topology.json"
FINAL = ("resolved", "escalated", "failed", "merged", "diagnosed")
INCIDENT = "incident:"  # + incident id: the lease of the worker that drives the incident

# Short event-time windows, as tests/live.py's settings: an incident is diagnosed after 5 s of evidence.
# Incidents sit far apart in event time (`faults`), so an incident must not age out as stale (idle_close_s)
# while event time races past it: a burst of faults jumps it by thousands of seconds at once.
DEFAULT_ENV = {"RTEM_DIAGNOSE_AFTER_S": "5", "RTEM_VERIFY_QUIET_S": "30", "RTEM_VERIFY_DEADLINE_S": "300",
               "RTEM_IDLE_CLOSE_S": "10000000", "RTEM_NATS_RECONNECT_WAIT_S": "0.25"}

_live: weakref.WeakSet[WorkerCluster] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_live):
        cluster.close(grace_s=0)


class Lease(NamedTuple):
    holder: str
    epoch: int
    live: bool


NO_LEASE = Lease("", 0, False)


# -- the workers ----------------------------------------------------------------------------------------


class Worker:
    """One `rtem run` process, started again on the same data directory and worker id by `start()`."""

    def __init__(self, name: str, directory: Path, command: list[str], env: dict[str, str]):
        self.name = name
        self.data = directory / name
        self.log = directory / f"{name}.log"
        self.command = command
        self.env = {**env, "RTEM_DATA_DIR": str(self.data), "RTEM_WORKER_ID": name}
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stopped = False  # SIGSTOPped and not yet continued
        self.killed = False  # this life's group was SIGKILLed and reaped

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"worker {self.name} is already running (pid {self.proc.pid})")
        self.starts += 1
        self.stopped = self.killed = False
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the worker and anything it started) and reap it; once a
        life (its pid could be another process's later)."""
        if self.proc is None or self.killed:
            return
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = True
        self.stopped = False

    def pause(self) -> None:
        """SIGSTOP: as a long GC pause, a frozen VM or a migration would; its leases run out meanwhile."""
        _signal_group(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        _signal_group(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def terminate(self, grace_s: float = 20.0) -> None:
        """SIGTERM (a clean stop: it hands its leases over), SIGKILL after `grace_s`; the group either way."""
        if self.proc is None or self.killed:
            return
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            _signal_group(self.proc.pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also whatever its group left behind

    def text(self, life: int | None = None) -> str:
        """The log; of one life only (1 = the first start) when `life` is given."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if life is None:
            return text
        parts = re.split(r"^--- start \d+ at [\d.]+\n", text, flags=re.MULTILINE)
        return parts[life] if 0 < life < len(parts) else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def http_url(self, timeout: float = 60.0) -> str:
        """Where this life serves the HTTP API (a worker started with `http=True`), read from its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"HTTP API and console at (http://\S+)", self.text(self.starts))
            if found:
                return found.group(1)
            if not self.running:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} serves no HTTP API:\n{self.tail()}")


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # start_new_session: the group's id is the worker's pid
    except ProcessLookupError:
        pass


class WorkerCluster:
    """N `rtem run` workers sharing `database_url` (PostgreSQL) and `nats_url` (one server or a cluster's
    comma-separated list); see the module's docstring."""

    def __init__(self, directory: Path, nats_url: str, database_url: str, *, topology: Path = BOUTIQUE,
                 replicas: int = 1, lease_s: float = 3.0, env: dict[str, str] | None = None, http: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.lease_s = lease_s
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RTEM_")}  # nothing of the caller's
        self.env.update(DEFAULT_ENV)
        self.env.update({"RTEM_NATS_URL": nats_url, "RTEM_DATABASE_URL": database_url,
                         "RTEM_NATS_REPLICAS": str(replicas), "RTEM_LEADER_LEASE_S": f"{lease_s:g}",
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.command = [sys.executable, "-m", "agent", "run", "--topology", str(topology), "--metrics-port", "0"]
        self.command += ["--http-port", "0"] if http else ["--no-http"]
        self.workers: dict[str, Worker] = {}
        _live.add(self)

    def __enter__(self) -> WorkerCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> Worker:
        return self.workers[name]

    # -- processes --

    def start(self, *names: str, env: dict[str, str] | None = None) -> None:
        """Start workers (new ones, or ones that were stopped or killed, on their own data directory), all
        at once, as a deployment does."""
        for name in names:
            worker = self.workers.get(name)
            if worker is None:
                worker = self.workers[name] = Worker(name, self.directory, self.command, {**self.env, **(env or {})})
            worker.start()

    def kill(self, name: str) -> float:
        """SIGKILL a worker; the moment (time.monotonic) it was dead."""
        self.workers[name].kill()
        return time.monotonic()

    def pause(self, name: str) -> None:
        self.workers[name].pause()

    def resume(self, name: str) -> None:
        self.workers[name].resume()

    def restart(self, name: str) -> None:
        """Kill the worker if it still runs, and start it again with the same id and data directory."""
        self.workers[name].kill()
        self.workers[name].start()

    def running(self) -> list[str]:
        return [name for name, w in self.workers.items() if w.running and not w.stopped]

    def close(self, grace_s: float = 20.0) -> None:
        """Stop every worker: SIGTERM and SIGCONT to each group, then SIGKILL what is left."""
        for worker in self.workers.values():
            if worker.running and not worker.killed:
                _signal_group(worker.proc.pid, signal.SIGTERM)
                _signal_group(worker.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + grace_s
        for worker in self.workers.values():
            if worker.proc is not None:
                try:
                    worker.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                worker.kill()
        _live.discard(self)

    def exited(self) -> dict[str, str]:
        """Workers that exited by themselves (not killed by us): name -> their log's last lines."""
        return {name: w.tail(15) for name, w in self.workers.items()
                if w.proc is not None and w.proc.returncode not in (None, -signal.SIGKILL, -signal.SIGTERM)}

    # -- the leases --

    def leases(self, prefix: str = "") -> dict[str, Lease]:
        """Every lease row (whose name starts with `prefix`): name -> (holder, epoch, live by the database's clock)."""
        return read_leases(self.database_url, prefix)

    def leader(self) -> Lease:
        return self.leases("leader").get("leader", NO_LEASE)

    def owners(self) -> dict[str, Lease]:
        """incident id -> the lease of the worker that drives it."""
        return {name[len(INCIDENT):]: lease for name, lease in self.leases(INCIDENT).items()}

    def owner(self, incident_id: str) -> Lease:
        """The lease on `incident_id` (NO_LEASE before a worker took it, and once it is final)."""
        return self.leases(INCIDENT + incident_id).get(INCIDENT + incident_id, NO_LEASE)

    def heartbeats(self) -> dict[str, bool]:
        """worker -> whether its heartbeat lease is live."""
        return {name.split(":", 1)[1]: lease.live for name, lease in self.leases("worker:").items()}

    def wait_ready(self, names: Iterable[str] | None = None, timeout: float = 90.0) -> None:
        """Until the workers beat their heartbeat and one of them leads (or one of them exits: an error)."""
        names = list(names or self.running())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            beating = self.heartbeats()
            if all(beating.get(n) for n in names) and self.leader().live:
                return
            dead = [n for n in names if not self.workers[n].running]
            if dead:
                raise RuntimeError(f"worker {dead[0]} exited:\n{self.workers[dead[0]].tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"workers {names} not ready within {timeout:.0f}s: heartbeats {self.heartbeats()}, "
                           f"leader {self.leader()}\n" + "\n".join(self.workers[n].tail(10) for n in names))

    def wait_leader(self, *, other_than: str | None = None, timeout: float = 30.0) -> Lease:
        """Until a live leader (other than `other_than`) holds the lease."""
        return wait_until(lambda: (lease := self.leader()).live and lease.holder != other_than and lease,
                          timeout, lambda: f"no new leader: {self.leader()}")

    def wait_owner(self, incident_id: str, *, other_than: str | None = None, timeout: float = 30.0) -> Lease:
        """Until a worker (other than `other_than`) owns the incident: holds a live lease on it, or said in its
        log that it took it (an incident finished between two looks has no lease row any more)."""
        def taken():
            lease = self.owner(incident_id)
            if lease.live and lease.holder != other_than:
                return lease
            return next((lease for lease in reversed(self.owner_history(incident_id)) if lease.holder != other_than),
                        None)

        return wait_until(taken, timeout, lambda: f"incident {incident_id} not taken over: {self.owner(incident_id)} "
                                                  "(no incident:<id> lease: per-incident ownership is not there?)")

    def owner_history(self, incident_id: str) -> list[Lease]:
        """Who took the incident, at which epoch, as the workers' logs say ("worker X owns incident I (epoch
        N)"), oldest epoch first; `live` is False (a log does not say whether the lease still holds)."""
        said = re.compile(rf"worker (\S+) owns incident {re.escape(incident_id)} \(epoch (\d+)\)")
        found = {(worker, int(epoch)) for w in self.workers.values() for worker, epoch in said.findall(w.text())}
        return [Lease(worker, epoch, False) for worker, epoch in sorted(found, key=lambda pair: pair[1])]

    # -- the records --

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, list(params)).fetchall()

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident, merged ones too, oldest first: id, status, first_ts."""
        if not _has_table(self.database_url, "incidents"):
            return []
        return [{"id": i, "status": s, "first_ts": t}
                for i, s, t in self.query("SELECT id, status, first_ts FROM incidents ORDER BY first_ts, id")]

    def incident_of(self, event_id: str) -> str | None:
        """The incident an event was recorded in (None before it was, or when it is in none)."""
        if not _has_table(self.database_url, "events"):
            return None
        rows = self.query("SELECT incident_id FROM events WHERE id = %s", [event_id])
        return rows[0][0] if rows else None

    def status(self, incident_id: str) -> str | None:
        rows = self.query("SELECT status FROM incidents WHERE id = %s", [incident_id])
        return rows[0][0] if rows else None

    def step(self, key: str) -> str | None:
        """The ledger's status of a step (`<incident>/<index>/do`): started, succeeded, failed; None."""
        if not _has_table(self.database_url, "executions"):
            return None
        rows = self.query("SELECT status FROM executions WHERE key = %s", [key])
        return rows[0][0] if rows else None

    def event_count(self) -> tuple[int, int]:
        """(rows, distinct ids) in the events table."""
        if not _has_table(self.database_url, "events"):
            return 0, 0
        return self.query("SELECT COUNT(*), COUNT(DISTINCT id) FROM events")[0]

    def all_final(self, expected: int, also: tuple[str, ...] = ()) -> bool:
        """At least `expected` incidents (not merged), each in a final status (or one of `also`)."""
        rows = [r for r in self.incidents() if r["status"] != "merged"]
        return len(rows) >= expected and all(r["status"] in FINAL + also for r in rows)

    def logs(self) -> str:
        """Every worker's log tail, for an assertion's message."""
        return "\n".join(f"== {name} ==\n{w.tail(25)}" for name, w in self.workers.items())


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A URL of a new, empty database on `server_url`'s server; dropped on exit (its sessions ended first).

    A database rather than tests/postgres.py's schema: what a worker's first start waits for in PostgreSQL
    is database-wide (the checkpoint tables' `CREATE INDEX CONCURRENTLY` waits for every older transaction
    in the database), so a long transaction of another test's in a shared database would slow these
    workers' start."""
    name = f"rtem_cluster_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(server_url)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def read_leases(database_url: str, prefix: str = "") -> dict[str, Lease]:
    if not _has_table(database_url, "leases"):
        return {}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT name, holder, epoch, expires_at > EXTRACT(EPOCH FROM clock_timestamp()) "
                            "FROM leases WHERE name LIKE %s", [prefix + "%"]).fetchall()
    return {name: Lease(holder, epoch, bool(live)) for name, holder, epoch, live in rows}


def _has_table(database_url: str, table: str) -> bool:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is not None




async def wait_async(predicate, timeout: float, message=None, interval: float = 0.1):
    """`wait_until` for a coroutine: the predicate runs in a thread (it queries PostgreSQL)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"not within {timeout:g}s" + (f": {message()}" if message else ""))


# -- the systems rtem acts on -------------------------------------------------------------------------


class CountingTarget:
    """Answers rtem's commands (`rtem.cmd.>`) as a real system would: the first request with an idempotency key
    is applied, a repeat gets the same answer from memory. Records every request (time, key, action, target,
    incident). `fail`: actions that fail. `hold_s`: action (every step of it) or `action/kind` (`scale_out/do`:
    the action, not its compensation) -> seconds the *first* request of a key waits after being applied before
    it is answered: a slow action, during which a test kills its caller."""

    def __init__(self, fail: Iterable[str] = (), hold_s: dict[str, float] | None = None):
        self.fail = set(fail)
        self.hold_s = dict(hold_s or {})
        self.requests: list[tuple[float, str, str, str, str]] = []
        self.per_key: Counter[str] = Counter()
        self.applied: dict[str, tuple[str, str, str]] = {}  # key -> (action, target, incident), first time
        self.answers: dict[str, bytes] = {}
        self.holding: set[str] = set()  # keys applied whose answer is being held back

    async def attach(self, nc) -> None:
        await nc.subscribe("rtem.cmd.>", cb=self._on_command)

    async def _on_command(self, msg) -> None:
        request = json.loads(msg.data)
        if request["action"] == "notify_oncall":
            return  # the workers' own pager answers those
        key, action = request["idempotency_key"], request["action"]
        self.requests.append((time.time(), key, action, request["target"], request.get("incident_id", "")))
        self.per_key[key] += 1
        if key not in self.answers:
            if action in self.fail:
                self.answers[key] = json.dumps({"ok": False, "error": f"{action} failed on {request['target']}"}).encode()
            else:
                self.applied[key] = (action, request["target"], request.get("incident_id", ""))
                self.answers[key] = json.dumps({"ok": True, "result": {"applied": True}}).encode()
                hold = self.hold_s.get(f"{action}/{key.rsplit('/', 1)[-1]}", self.hold_s.get(action))
                if hold:
                    self.holding.add(key)
                    asyncio.get_running_loop().call_later(hold, self._answer, msg, key)
                    return
        await msg.respond(self.answers[key])

    def _answer(self, msg, key: str) -> None:
        self.holding.discard(key)
        asyncio.ensure_future(self._respond(msg, key))

    async def _respond(self, msg, key: str) -> None:
        try:
            await msg.respond(self.answers[key])
        except Exception:  # noqa: BLE001, S110 - the connection closed meanwhile: the asker is gone anyway
            pass

    def keys_of(self, incident_id: str) -> list[str]:
        return [k for k, (_, _, incident) in self.applied.items() if incident == incident_id]

    def twice(self, ledger_done: dict[str, float] | None = None) -> list[str]:
        """Actions executed twice: the same step (incident, action, target, do or undo) applied under two
        keys, and — given the ledger's finish times — a key requested again after the ledger recorded it
        succeeded."""
        seen = Counter((incident, action, target, key.rsplit("/", 1)[-1])  # a compensation is a step of its own
                       for key, (action, target, incident) in self.applied.items())
        twice = [f"{action} {target} ({kind}) of {incident} under {n} keys"
                 for (incident, action, target, kind), n in seen.items() if n > 1]
        first: dict[str, float] = {}
        for t, key, *_ in self.requests:
            if key in first and ledger_done and key in ledger_done and t > ledger_done[key] + 0.05:
                twice.append(f"{key} requested again after the ledger recorded it succeeded")
            first.setdefault(key, t)
        return twice


# -- disruptions -------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """`count` CPU anomalies on a service's instances (`<service>-0..2`), one a second from `start_s` (event
    time after tests.helpers.T0). With the deterministic reasoner the boutique's services get scale_out, then
    shed_load."""

    id: str
    service: str
    start_s: float
    count: int = 10
    instances: int = 3
    events: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.events:
            self.events = [anomaly(f"{self.id}-a{i}", f"{self.service}-{i % self.instances}", self.start_s + i)
                           for i in range(self.count)]

    @property
    def event_ids(self) -> list[str]:
        return [e["id"] for e in self.events]


SERVICES = ("cartservice", "currencyservice", "paymentservice", "shippingservice", "emailservice", "adservice",
            "recommendationservice", "productcatalogservice", "checkoutservice", "frontend")


def faults(prefix: str, count: int, *, first_s: float = 0.0, every_s: float = 400.0, per_fault: int = 10,
           services: tuple[str, ...] = SERVICES) -> list[Fault]:
    """`count` faults, each on the next service, `every_s` of event time apart. Nearly every boutique instance
    runs on node-5, so faults closer than a correlation gap (RTEM_CORRELATION_GAP_S, 300 s) would be one
    incident; and an anomaly a killed leader held unacked, redelivered after the next fault's, must still find
    its incident: within two gaps (600 s) of it (docs/chaos.md, defect 2). Hence 400 s."""
    return [Fault(f"{prefix}{i}", services[i % len(services)], first_s + i * every_s, per_fault)
            for i in range(count)]


def samples(prefix: str, subject: str, start_s: float, count: int, every_s: float = 1.0) -> list[dict]:
    """Healthy samples: they move event time on (verification waits for quiet event time)."""
    return [sample(f"{prefix}{i}", subject, start_s + i * every_s) for i in range(count)]


async def publish(bus, events: list[dict]) -> int:
    """Publish with `Nats-Msg-Id`, retrying while a server of the cluster dies; the events acked."""
    lines = [json.dumps(e).encode() for e in events]
    deadline = time.monotonic() + 60
    while True:
        try:
            report = await bus.publish_lines(lines)
            return report.published + report.duplicates
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# -- what must never happen ------------------------------------------------------------------------------


def ledger_finished(cluster: WorkerCluster) -> dict[str, float]:
    """key -> when the ledger recorded the step succeeded (epoch seconds)."""
    if not _has_table(cluster.database_url, "executions"):
        return {}
    return {key: datetime.fromisoformat(done).timestamp()
            for key, done in cluster.query("SELECT key, finished_at FROM executions WHERE status = 'succeeded' "
                                           "AND finished_at IS NOT NULL")}


async def settle(cluster: WorkerCluster, sent: Iterable[str], timeout: float = 30.0) -> None:
    """Give the consumer time to record every event sent before `integrity` judges: an event whose delivery
    was lost with a killed server comes back only after `ack_wait`, possibly after the incidents it belongs
    to are already final. An event still missing after `timeout` is reported lost by `integrity`."""
    sent = set(sent)

    def recorded() -> bool:
        if not _has_table(cluster.database_url, "events"):
            return False
        with psycopg.connect(cluster.database_url) as conn:
            return sent <= {row[0] for row in conn.execute("SELECT id FROM events")}

    try:
        await wait_async(recorded, timeout)
    except AssertionError:
        pass  # integrity() names what is missing


def integrity(cluster: WorkerCluster, sent: Iterable[str], planted: Iterable[Fault],
              target: CountingTarget) -> dict[str, Any]:
    """Events sent but not recorded (or recorded twice), faults that became two incidents, and actions
    executed twice. Each figure must be 0 after any chaos."""
    sent = set(sent)
    planted = list(planted)
    recorded: dict[str, str | None] = {}
    if _has_table(cluster.database_url, "events"):
        with psycopg.connect(cluster.database_url) as conn:
            for event_id, incident_id in conn.execute("SELECT id, incident_id FROM events"):
                recorded[event_id] = incident_id
        rows, distinct = cluster.event_count()
    else:
        rows = distinct = 0
    per_fault = {f.id: {recorded[e] for e in f.event_ids if recorded.get(e)} for f in planted}
    twice = target.twice(ledger_finished(cluster))
    return {"events_sent": len(sent), "events_recorded": len(sent & recorded.keys()),
            "events_lost": len(sent - recorded.keys()), "lost_ids": sorted(sent - recorded.keys())[:10],
            "events_recorded_twice": rows - distinct,
            "faults": len(planted), "incidents_duplicated": sum(len(ids) > 1 for ids in per_fault.values()),
            "faults_undetected": sum(not ids for ids in per_fault.values()),
            "actions_executed": len(target.applied), "actions_executed_twice": len(twice), "twice_detail": twice}
