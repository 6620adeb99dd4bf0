"""`rtem run`: the long-running service.

It consumes the live EVENTS stream through triage, starts one LangGraph thread per incident once the
incident has gathered `diagnose_after_s` of event-time evidence, and keeps every unfinished thread
moving: waiting for approvals, for the kill switch, or for recovery. Everything it needs to go on is
in the database (store, ledger, checkpoints) and JetStream (unacked events), so a `kill -9` and a
restart resume every open incident where it stood.

Several workers share the work (docs/deployment.md): the one that holds the leader lease consumes
(triage) and does the chores that must run once (the audit copy, idle closes, retention); every worker
drives incidents, each incident owned by one worker at a time through its own lease (agent/cluster),
at most `worker_concurrency` threads at once.
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

from bus import Bus, EmbeddedNats, RetryPolicy
from bus import RTEM_USER
from rules import Topology

from . import metrics, telemetry
from .config import Settings
from .executors import CommandTransport, Executors, HttpTransport, NatsTransport
from .graph import page_oncall
from .incident import IncidentStatus, alert_states, alerts_recovered
from .ledger import ledger_scope
from .rules_reload import RulesReloader
from .service import Components, build, check_audit_copy, publish_audit
from .idle import IdleCloser, StillClock
from .cluster import CONSUMER_STATE, Fenced, Leadership, Ownership
from .leading import LeaderLoop
from .notify import IncidentPager, Notifications, build_notifications
from .db import reopen
from .serve import purge_regularly, serve_http, start_embedded_server
from .tokens import TokenStore
from .discovery import topology_tasks
from .escalation import Escalator, escalate_regularly, policy_source, send_through

log = logging.getLogger("rtem.run")

FINAL = tuple(status.value for status in IncidentStatus if status.final)
WAITING_STATUS = {"approval": "awaiting_approval", "resume": "paused"}
FAILURE_RETRY = RetryPolicy(max_attempts=5, initial_interval_s=1.0, backoff=2.0, max_interval_s=30.0)
STOP_GRACE_S = 10.0  # how long a stop waits for incident threads in a step (an executor call) to finish
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
        self._advancing: dict[str, asyncio.Task] = {}
        self._waiting: dict[str, dict[str, Any]] = {}
        self._checked: dict[str, float] = {}
        self._looked: dict[str, int] = {}  # event_count at which an incident's alerts were last found firing
        self._failures: dict[str, int] = {}  # consecutive failures of an incident's thread
        self._retry_at: dict[str, float] = {}  # monotonic time before which it is not tried again
        self.pages: list[dict[str, Any]] = []
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
        consume, do the chores, and purge by the retention settings."""
        self.parts.triage.restore()
        self._roles_stop = stop
        return [asyncio.create_task(self._consume(), name="consume"),
                asyncio.create_task(self._chores(stop), name="chores"),
                asyncio.create_task(purge_regularly(self.parts, self.settings, stop, self.retention_every_s),
                                    name="retention")]

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
                await self._finish_threads()
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

    async def _finish_threads(self) -> None:
        running = list(self._advancing.values())
        if not running:
            return
        _, unfinished = await asyncio.wait(running, timeout=STOP_GRACE_S)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if unfinished:
            log.warning("stopped %d incident thread(s) mid-step; they resume from their checkpoints on the "
                        "next start", len(unfinished))

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
        result = self.parts.triage.handle(events)
        metrics.EVENTS.inc(self.parts.triage.stats.events - before)
        metrics.INCIDENTS.inc(len(result.opened))

    async def _drive(self) -> None:
        """Every worker's loop: move on the incidents it owns, and take those no worker owns."""
        while not self._drive_stop.is_set():
            try:
                rows = self.parts.store.active_incidents()
                await self.tick(rows)
                # Owned, idle here, and no longer active: closed elsewhere (a person resolved it while it
                # waited for an approval): give up its lease and what this worker kept about it.
                for incident_id in set(self.ownership.owned) - {row["id"] for row in rows} - set(self._advancing):
                    self._finished(incident_id)
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
        idle = IdleCloser(self.parts, self.settings.idle_close_s, self._closed_idle)
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
                                 claim=lambda incident_id: (incident_id not in self._advancing
                                                            and incident_id not in others
                                                            and self.ownership.take(incident_id)))
            except Exception:
                log.exception("the leader's chores failed; trying again")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    async def tick(self, rows: list[dict[str, Any]]) -> None:
        """Start threads for the active incidents that are ready, this worker's or no worker's, while it
        has room (`worker_concurrency`), and move waiting ones along."""
        watermark = self.parts.graph.deps.watermark()
        others = self.ownership.others() if rows else set()
        for row in rows:
            incident_id = row["id"]
            if incident_id in self._advancing or incident_id in others or not self._ready(row, watermark):
                continue
            if len(self._advancing) >= self.settings.worker_concurrency:
                break
            if not await asyncio.to_thread(self.ownership.take, incident_id):
                continue  # another worker took it first
            task = asyncio.create_task(self._advance(incident_id, row["status"], watermark))
            self._advancing[incident_id] = task
            task.add_done_callback(lambda _t, key=incident_id: self._advancing.pop(key, None))

    def _ready(self, row: dict[str, Any], watermark: float) -> bool:
        """Whether a thread can make progress now, so waiting threads are not spun for nothing."""
        status, incident_id = row["status"], row["id"]
        if time.monotonic() < self._retry_at.get(incident_id, 0.0):
            return False
        if status == "open":
            return watermark - row["first_ts"] >= self.settings.diagnose_after_s or self._alerts_resolved(row)
        if status == "paused":
            return not self.parts.ledger.paused() or self._alerts_resolved(row)
        if status == "verifying":
            return watermark > self._checked.get(incident_id, float("-inf")) or self._alerts_resolved(row)
        if status == "awaiting_approval":
            waiting = self._waiting.get(incident_id)
            if waiting is None:
                return True  # after a restart: look once, the graph says what it waits for
            decided = self.parts.ledger.decisions(ledger_scope(self.parts.audit, incident_id))
            asked = datetime.fromisoformat(waiting["asked_at"])
            expired = (datetime.now(timezone.utc) - asked).total_seconds() > self.settings.approval_ttl_s
            return expired or any(index in decided for index in waiting["actions"]) or self._alerts_resolved(row)
        return True

    def _alerts_resolved(self, row: dict[str, Any]) -> bool:
        """Whether every alert of the incident resolved and no signal came after (docs/lifecycle.md): its
        thread then closes it. Looked at again only once events arrived for it, so an incident that waits
        costs no query per poll."""
        incident_id = row["id"]
        if self._looked.get(incident_id) == row["event_count"]:
            return False
        alerts = alert_states(self.parts.store.alert_events(incident_id))
        if alerts and alerts_recovered(alerts, row["last_ts"]) is not None:
            return True  # not noted: until its thread closes it, it stays ready
        self._looked[incident_id] = row["event_count"]
        return False

    async def _closed_idle(self, incident_id: str, status: str) -> None:
        self._looked.pop(incident_id, None)
        self._finished(incident_id)
        self._changed(incident_id, status)
        await self._write_reports(incident_id)

    async def _advance(self, incident_id: str, status: str, watermark: float) -> None:
        """Move one incident's thread on; a failure is retried with backoff, then the incident is
        marked failed, recorded, and a person is paged."""
        try:
            await self._step(incident_id, status, watermark)
        except Fenced as exc:  # another worker owns it now: the thread goes on there, from its checkpoint
            log.warning("incident %s: %s", incident_id, exc)
        except Exception as exc:
            failures = self._failures[incident_id] = self._failures.get(incident_id, 0) + 1
            log.exception("incident %s: its thread failed (%d of %d attempts)", incident_id, failures,
                          self.failure_retry.max_attempts)
            if failures < self.failure_retry.max_attempts:
                self._retry_at[incident_id] = time.monotonic() + self.failure_retry.interval(failures)
                return
            await self._fail(incident_id, f"{type(exc).__name__}: {exc}", failures)
        else:
            self._failures.pop(incident_id, None)
            self._retry_at.pop(incident_id, None)

    async def _fail(self, incident_id: str, error: str, attempts: int) -> None:
        reason = f"rtem failed on this incident {attempts} times in a row; last error: {error}"
        self.parts.audit.append("incident.failed", incident_id=incident_id, node="run",
                                inputs={"attempts": attempts}, decision={"status": "failed"}, reasons=[reason])
        self.parts.store.set_status(incident_id, "failed")
        self._changed(incident_id, "failed")
        try:
            await page_oncall(self.parts.graph.deps, incident_id, f"rtem failed on incident {incident_id}: {reason}",
                              "failure")
        except Exception:  # the record above stands; the page is best effort once rtem itself is failing
            log.exception("incident %s: paging about its failure failed", incident_id)
        self._finished(incident_id)  # after the page: the page is a step of the incident's, fenced by its lease

    async def _step(self, incident_id: str, status: str, watermark: float) -> None:
        graph = self.parts.graph
        if status == "open":
            self.parts.store.set_status(incident_id, "diagnosing")
            self._changed(incident_id, "diagnosing")
            values, waiting = await graph.run(incident_id)
        else:
            if status == "verifying":
                self._checked[incident_id] = watermark
            values, waiting = await graph.proceed(incident_id)
        if waiting:
            self._waiting[incident_id] = waiting
        new_status = WAITING_STATUS[waiting["waiting"]] if waiting else values.get("status", status)
        closed = self.parts.store.closed_by_person(incident_id)
        if closed is not None:  # a person closed it while its thread ran: what the thread says no longer counts
            self._looked.pop(incident_id, None)
            self._finished(incident_id)
            self._changed(incident_id, closed.get("status", "resolved"))
            return
        if new_status not in FINAL:
            # Operators (rtem incidents, rtem approve) read the plan from the store while it waits.
            self.parts.store.save_diagnosis(incident_id, status=new_status, root_causes=values.get("root_causes", []),
                                            actions=values.get("actions", []), versions=graph.deps.versions())
        if new_status != status:
            self._changed(incident_id, new_status)
        if new_status in FINAL:
            self._looked.pop(incident_id, None)
            self._finished(incident_id)
            if values.get("mttr_s") is not None:
                metrics.MTTR.observe(values["mttr_s"])
            if new_status != "merged":
                await self._write_reports(incident_id)

    def _finished(self, incident_id: str) -> None:
        """The incident is final: forget it, stop correlating into it (the leader's triage; another
        worker's leader learns it from the store), and give up its lease."""
        for state in (self._failures, self._retry_at, self._waiting, self._checked):
            state.pop(incident_id, None)
        self.parts.triage.correlator.release(incident_id)
        self.ownership.release(incident_id)

    async def _write_reports(self, incident_id: str) -> None:
        """The rationale report of a closed incident, written beside the store (agent/report.py)."""
        from .report import write_reports

        directory = Path(self.settings.reports_dir or Path(self.settings.data_dir) / "reports")
        try:  # on a worker thread, with its own connections to the store
            written = await asyncio.to_thread(write_reports, self.parts.store, self.parts.audit, incident_id,
                                              directory)
            log.info("incident %s: report %s", incident_id, written["html"])
        except Exception:  # a report is an explanation, not a control: its failure must not stop the service
            log.exception("incident %s: writing its report failed (rtem report %s rebuilds it)", incident_id,
                          incident_id)

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
