"""`rtem run`: the long-running service.

It consumes the live EVENTS stream through triage, starts one LangGraph thread per incident once the
incident has gathered `diagnose_after_s` of event-time evidence, and keeps every unfinished thread
moving: waiting for approvals, for the kill switch, or for recovery. Everything it needs to go on is
in the database (store, ledger, checkpoints) and JetStream (unacked events), so a `kill -9` and a
restart resume every open incident where it stood.

Several workers share the work (docs/deployment.md): the one that holds the leader lease consumes
(triage) and does the chores that must run once (the audit copy, idle closes, retention, trimming the
EVENTS stream); every worker
drives incidents (agent/driving.py), each incident owned by one worker at a time through its own lease
(agent/cluster), at most `worker_concurrency` threads at once. Beside them run the pager (agent/notify),
the escalation policy's `Escalator`, hot reloads of rules and topology, and the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bus import Bus, EmbeddedNats, RetryPolicy, Unavailable
from bus import RTEM_USER
from rules import Topology

from . import metrics, telemetry
from .config import Settings
from .executors import CommandTransport, Executors, HttpTransport, NatsTransport
from .driving import STOP_GRACE_S, IncidentDriver
from .rules_reload import RulesReloader
from .service import Components, build, check_audit_copy, publish_audit
from .idle import IdleCloser, StillClock
from .cluster import CONSUMER_STATE, Fenced, Leadership, Ownership
from .leading import LeaderLoop
from .notify import IncidentPager, Notifications, build_notifications
from .db import reopen, unavailable
from .serve import purge_regularly, serve_http, start_embedded_server, trim_regularly
from .tokens import TokenStore
from .discovery import topology_tasks
from .escalation import Escalator, escalate_regularly, policy_source, send_through

log = logging.getLogger("rtem.run")

FAILURE_RETRY = RetryPolicy(max_attempts=5, initial_interval_s=1.0, backoff=2.0, max_interval_s=30.0)
CONSUMER_EVERY_S = 5.0  # how often the leader saves its consumer's lag (CONSUMER_STATE)
RETENTION_EVERY_S = 24 * 3600.0  # how often `rtem run` purges by the retention settings (docs/retention.md)


class Service:
    def __init__(self, settings: Settings, topology: Topology, *, dry_run: bool = False,
                 on_change: Callable[[str, str], None] | None = None, poll_s: float = 0.25,
                 http: bool | None = None, failure_retry: RetryPolicy = FAILURE_RETRY,
                 retention_every_s: float = RETENTION_EVERY_S):
        """`http`: serve the API and console on settings.http_host/http_port; None: only when
        http_port was set explicitly (RTEM_HTTP_PORT, the settings file, or a keyword)."""
        self.settings = settings
        self.topology = topology
        self.dry_run = dry_run
        self.on_change = on_change
        self.poll_s = poll_s
        self.failure_retry = failure_retry  # how often a failing incident thread is tried before `failed`
        self.retention_every_s = retention_every_s  # a purge a minute after start (or sooner), then this often
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.parts: Components | None = None
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.pages: list[dict[str, Any]] = []
        self.driver: IncidentDriver | None = None  # moves this worker's incidents on (agent/driving.py)
        self.notifications: Notifications | None = None  # Alertmanager and the direct notifiers (agent/notify)
        self.pager: IncidentPager | None = None  # what they are told as this worker's incidents move
        self.escalator: Escalator | None = None  # pages by the escalation policy (agent/escalation.py)
        self.http = "http_port" in settings.model_fields_set if http is None else http
        self.http_url: str | None = None
        self._http_server = None
        self._tokens = None
        self._reader = None  # the API's read-only database
        self.leader: LeaderLoop | None = None  # keeps the leader lease; the leader's work runs while it is held
        self._roles_stop = asyncio.Event()  # set when this worker stops leading (or stops)
        self._drive_stop = asyncio.Event()  # set when this worker stops driving incidents (it stops)
        self._driving: asyncio.Task | None = None
        self._beat_stop = asyncio.Event()  # set when the heartbeat stops: after the incidents' threads

    @property
    def url(self) -> str:
        return self.settings.nats_url or self.server.url

    async def start(self) -> Service:
        telemetry.setup(self.settings.otel_exporter)
        data_dir = Path(self.settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        bus_settings = self.settings.bus_settings()
        if not self.settings.nats_url:
            self.server = start_embedded_server(data_dir, self.settings.nats_targets)
            bus_settings = replace(bus_settings, auth=self.server.credentials(RTEM_USER))
        self.bus = await Bus.connect(self.url, bus_settings, name="rtem-run")
        await self.bus.ensure_streams()
        executors = Executors({"nats": NatsTransport(self.bus), "http": HttpTransport(),
                               "command": CommandTransport(self.settings.command_allowlist)},
                              on_breaker=self._breaker_opened)
        # Hot reload: a changed rule file is checked and swapped in between two batches, or refused
        # (logged and audited) while the rules in force stay.
        self.parts = await build(self.settings, self.topology, data_dir, dry_run=self.dry_run, executors=executors,
                                 hot_reload=True, lead=True).open()
        self.reloader: RulesReloader = self.parts.rules
        self.driver = IncidentDriver(self.parts, self.settings, self.ownership, self._changed,
                                     self.failure_retry)
        self.notifications = build_notifications(self.settings, self.parts.audit)
        self.pager = IncidentPager(self.notifications, self.parts.store, self.parts.audit,
                                   topology=self.parts.topology.current, public_url=self.settings.public_url,
                                   refresh_s=self.settings.alertmanager_refresh_s)
        await check_audit_copy(self.bus, self.parts.audit)  # once: a log cut short is said at start
        # One worker of several answers each page (a queue group), not every one of them.
        await self.bus.nc.subscribe("rtem.cmd.notify_oncall.*", queue="rtem-pager", cb=self._page)
        self.leader = LeaderLoop(self.leadership, self.settings.leader_lease_s, self._lead,
                                 heartbeat=self._heartbeat)
        await self.leader.keep()  # a lone worker leads at once: consuming starts before start() returns
        self._tasks = [asyncio.create_task(self.reloader.watch(1.0, self.stop_event), name="rules"),
                       asyncio.create_task(self.leader.run(self._beat_stop), name="lead")]
        self._tasks += topology_tasks(self.settings, self.parts.topology, self.stop_event)
        # Pages by the escalation policy (none without a policy file): re-paging and escalating until a
        # person acknowledges; an acknowledgement is passed on to the destinations (PagerDuty's acknowledge).
        self.escalator = Escalator(policy_source(self.settings.escalation_policy_file(), self.parts.audit),
                                   self.parts.store, self.parts.audit, send_through(self.pager),
                                   lambda: datetime.now(timezone.utc), topology=self.parts.topology,
                                   drives=self.ownership.owns, leads=lambda: self.role == "leader",
                                   acknowledged=self.pager.acknowledge)
        self._tasks.append(asyncio.create_task(
            escalate_regularly(self.escalator, self.stop_event, self.settings.escalation_every_s), name="escalate"))
        self._driving = asyncio.create_task(self._drive(), name="drive")
        if self.http:
            await self._serve_http()
        log.info("rtem run: worker %s (%s), bus %s, store %s", self.leadership.worker_id, self.role, self.url,
                 self.parts.store.where)
        return self

    @property
    def leadership(self) -> Leadership:
        return self.parts.leadership

    @property
    def ownership(self) -> Ownership:
        return self.parts.ownership

    @property
    def role(self) -> str:
        """leader: consumes, and does the chores that run once; standby: waits to take over. Both drive
        incidents and serve the API."""
        return "leader" if self.leader is not None and self.leader.leading else "standby"

    def _heartbeat(self) -> None:
        """On a worker thread, every third of the lease: say this worker is alive and keep its incidents."""
        self.leadership.heartbeat()
        self.ownership.renew()

    def _lead(self, stop: asyncio.Event) -> list[asyncio.Task]:
        """The leader's work, until `stop`: pick up triage's state where the last leader left it, then
        consume, do the chores, purge by the retention settings, and trim EVENTS of what triage acknowledged."""
        self.parts.triage.restore()
        self._roles_stop = stop
        return [asyncio.create_task(self._consume(), name="consume"),
                asyncio.create_task(self._chores(stop), name="chores"),
                asyncio.create_task(purge_regularly(self.parts, self.settings, stop, self.retention_every_s),
                                    name="retention"),
                asyncio.create_task(trim_regularly(self.bus, stop, self.settings.events_trim_every_s),
                                    name="trim")]

    async def stop(self) -> None:
        """Stop in order, so nothing is lost and nothing fails on the way out: HTTP and taking new
        incidents; the incidents' threads (given `STOP_GRACE_S`, then cancelled: they resume from their
        checkpoints) while the heartbeat still keeps their leases, then the leases (released: another
        worker takes the incidents at once); consuming (after the batch in hand) and the leader lease
        (released: a standby takes over at once); the audit copy on the bus; the components; the bus;
        and the embedded NATS server last."""
        self.stop_event.set()
        if self._http_server is not None:
            self._http_server.should_exit = True
        try:
            if self._driving is not None:
                self._drive_stop.set()
                await asyncio.gather(self._driving, return_exceptions=True)
                await self.driver.finish_threads()
                try:
                    await asyncio.to_thread(self.ownership.leave)
                except Exception:
                    log.exception("giving the incidents up failed; other workers take them when the leases expire")
            self._beat_stop.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.leader is not None:
                await self.leader.leave()
            if self.pager is not None:  # the notices in flight, before the audit log they are recorded in closes
                await self.pager.drain(STOP_GRACE_S)
                await self.notifications.close()
            if self.parts is not None:
                try:
                    if self.bus is not None:  # bounded: with NATS gone, the next start copies the rest
                        await asyncio.wait_for(publish_audit(self.bus, self.parts.audit), STOP_GRACE_S)
                except Exception as exc:  # SQLite keeps every record; the next start copies what is missing
                    log.error("copying the audit log to the AUDIT stream failed on the way out: %s: %s",
                              type(exc).__name__, exc)
                finally:
                    await self.parts.close()
            if self.bus is not None:
                await self.bus.close()
            if self._tokens is not None:
                self._tokens.close()
            if self._reader is not None:
                self._reader.close()
        finally:
            if self.server is not None:
                self.server.stop()
            telemetry.flush()  # the spans still batched for the OTLP collector, before the process ends

    async def run_forever(self) -> None:
        await self.stop_event.wait()

    async def _consume(self) -> None:
        while not self._roles_stop.is_set():
            try:
                await self.bus.consume(self._handle, batch=self.settings.batch_size, stop=self._roles_stop,
                                       max_event_bytes=self.settings.max_event_bytes)
            except Exception:  # a lost connection: the client reconnects; nothing was acked that was not stored
                log.exception("consumer stopped; restarting it")
                await asyncio.sleep(1)

    async def _handle(self, events):
        before = self.parts.triage.stats.events
        try:
            result = self.parts.triage.handle(events)
        except Fenced as exc:  # this worker no longer leads: it stops consuming, the batch goes back
            metrics.TRIAGE_UNAVAILABLE.inc()
            raise Unavailable(str(exc)) from exc
        except Exception as exc:
            if unavailable(exc):  # the database is down: the batch waits for it (`bus._hold`), not failed
                metrics.TRIAGE_UNAVAILABLE.inc()
                raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
            raise
        metrics.EVENTS.inc(self.parts.triage.stats.events - before)
        metrics.INCIDENTS.inc(len(result.opened))

    async def _drive(self) -> None:
        """Every worker's loop: move on the incidents it owns, and take those no worker owns."""
        while not self._drive_stop.is_set():
            try:
                rows = self.parts.store.active_incidents()
                await self.driver.tick(rows)
                self.driver.release_closed(rows)
                if self.pager is not None:  # Alertmanager's alerts of the incidents this worker drives
                    self.pager.refresh(self.ownership.owned)
                for target, breaker in self.parts.graph.deps.executors.breakers.items():
                    metrics.BREAKER.labels(target=target).set(1 if breaker.state == "open" else 0)
            except Exception:
                log.exception("driving incidents failed; trying again")
            try:
                await asyncio.wait_for(self._drive_stop.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    async def _chores(self, stop: asyncio.Event) -> None:
        """The leader's chores, until `stop`: copy the audit log to the AUDIT stream, say how far the
        consumer lags, stop correlating into incidents other workers closed, and close idle ones."""
        still = StillClock()
        idle = IdleCloser(self.parts, self.settings.idle_close_s, self.driver.closed_idle)
        saved_at = 0.0
        while not stop.is_set():
            try:
                rows = self.parts.store.active_incidents()
                self.parts.triage.release_closed({row["id"] for row in rows})
                silent = False  # the bus is up and nothing waits on it: no event means no event
                if self.bus and not self.bus.nc.is_closed:
                    await publish_audit(self.bus, self.parts.audit)
                    lag = await self._lag()
                    metrics.CONSUMER_LAG.set(lag)
                    silent = self.bus.nc.is_connected and lag == 0
                    if time.monotonic() - saved_at >= CONSUMER_EVERY_S:
                        self.parts.store.save_state(CONSUMER_STATE, {
                            "lag": lag, "worker": self.leadership.worker_id,
                            "at": datetime.now(timezone.utc).isoformat()})
                        saved_at = time.monotonic()
                others = self.ownership.others()
                await idle.sweep(rows, still.seconds(self.parts.triage.detector.watermark, silent=silent),
                                 claim=lambda incident_id: (incident_id not in self.driver.advancing
                                                            and incident_id not in others
                                                            and self.ownership.take(incident_id)))
            except Exception:
                log.exception("the leader's chores failed; trying again")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    async def _serve_http(self) -> None:
        """The HTTP API and console (agent/api), on this event loop beside the consumer."""
        self._tokens = TokenStore(self.parts.store.db)
        self._reader = reopen(self.parts.store.db, readonly=True)
        self._http_server, task, self.http_url = await serve_http(
            self.settings, self.parts.topology, self.parts, self.bus, self.reloader, self._tokens, self._reader,
            ready=lambda: bool(self.bus and self.bus.nc.is_connected and not any(t.done() for t in self.leader.tasks)),
            role=lambda: self.role)
        self._tasks.append(task)
        log.info("rtem run: HTTP API and console at %s", self.http_url)

    async def _lag(self) -> int:
        try:
            return (await self.bus.backlog())[0]
        except Exception:  # the consumer is created by the first fetch; until then there is no lag
            return 0

    def _changed(self, incident_id: str, status: str) -> None:
        log.info("incident %s: %s", incident_id, status)
        if self.on_change:
            self.on_change(incident_id, status)
        if self.pager is not None:  # only the worker driving an incident changes its status: one notice
            self.pager.changed(incident_id, status)

    def _breaker_opened(self, target: str, error: str) -> None:
        metrics.BREAKER.labels(target=target).set(1)
        self.parts.audit.append("breaker.opened", node="execute", inputs={"target": target},
                                decision={"state": "open"}, reasons=[error])

    async def _page(self, msg) -> None:
        """The built-in pager for notify_oncall: the page goes to the direct notifiers (signed webhook,
        PagerDuty, Slack) as a trigger, and is answered ok only if one of them took it; with none
        configured, it is recorded in the log."""
        request = json.loads(msg.data)
        self.pages.append(request)
        summary = request.get("params", {}).get("summary", "")
        deliveries = await self.pager.page(request.get("incident_id"), summary) if self.pager else []
        if not deliveries:
            log.warning("page for %s: %s", request.get("target"), summary)
            reply = {"ok": True, "result": {"paged": "log"}}
        elif any(d.ok for d in deliveries):
            reply = {"ok": True, "result": {"paged": [d.destination.value for d in deliveries if d.ok]}}
        else:
            reply = {"ok": False, "result": {}, "error": "no notifier took the page: " + "; ".join(
                f"{d.destination.value}: {d.error}" for d in deliveries)}
        await msg.respond(json.dumps(reply).encode())
