"""Driving incidents: every `rtem run` worker moves on the active incidents it owns or takes, one
LangGraph thread each, at most `worker_concurrency` at once.

`IncidentDriver.tick` starts a thread for each incident that can make progress now (its evidence has
settled, an approval was decided, the kill switch was lifted, event time moved on while it verifies, or
its alerts resolved); a thread that fails is retried with backoff, then the incident is `failed`,
recorded as `incident.failed` and paged. A final incident is forgotten, released by correlation and its
lease given up, and its rationale report is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bus import RetryPolicy

from . import metrics
from .cluster import Fenced, Ownership
from .config import Settings
from .graph import page_oncall
from .incident import IncidentStatus, alert_states, alerts_recovered
from .ledger import ledger_scope
from .service import Components

log = logging.getLogger("rtem.run")

FINAL = tuple(status.value for status in IncidentStatus if status.final)
WAITING_STATUS = {"approval": "awaiting_approval", "resume": "paused"}
STOP_GRACE_S = 10.0  # how long a stop waits for incident threads in a step (an executor call) to finish


class IncidentDriver:
    def __init__(self, parts: Components, settings: Settings, ownership: Ownership,
                 changed: Callable[[str, str], None], failure_retry: RetryPolicy):
        """`changed(incident_id, status)` is told every status an incident's thread moves it to;
        `failure_retry` says how often a failing thread is tried before the incident is `failed`."""
        self.parts = parts
        self.settings = settings
        self.ownership = ownership
        self._changed = changed
        self.failure_retry = failure_retry
        self.advancing: dict[str, asyncio.Task] = {}  # the threads in a step now
        self._waiting: dict[str, dict[str, Any]] = {}
        self._checked: dict[str, float] = {}
        self._looked: dict[str, int] = {}  # event_count at which an incident's alerts were last found firing
        self._failures: dict[str, int] = {}  # consecutive failures of an incident's thread
        self._retry_at: dict[str, float] = {}  # monotonic time before which it is not tried again

    def release_closed(self, rows: list[dict[str, Any]]) -> None:
        """Owned, idle here, and no longer active: closed elsewhere (a person resolved it while it waited
        for an approval): give up its lease and what this worker kept about it."""
        for incident_id in set(self.ownership.owned) - {row["id"] for row in rows} - set(self.advancing):
            self.finished(incident_id)

    async def finish_threads(self) -> None:
        running = list(self.advancing.values())
        if not running:
            return
        _, unfinished = await asyncio.wait(running, timeout=STOP_GRACE_S)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if unfinished:
            log.warning("stopped %d incident thread(s) mid-step; they resume from their checkpoints on the "
                        "next start", len(unfinished))

    async def tick(self, rows: list[dict[str, Any]]) -> None:
        """Start threads for the active incidents that are ready, this worker's or no worker's, while it
        has room (`worker_concurrency`), and move waiting ones along."""
        watermark = self.parts.graph.deps.watermark()
        others = self.ownership.others() if rows else set()
        for row in rows:
            incident_id = row["id"]
            if incident_id in self.advancing or incident_id in others or not self._ready(row, watermark):
                continue
            if len(self.advancing) >= self.settings.worker_concurrency:
                break
            if not await asyncio.to_thread(self.ownership.take, incident_id):
                continue  # another worker took it first
            task = asyncio.create_task(self._advance(incident_id, row["status"], watermark))
            self.advancing[incident_id] = task
            task.add_done_callback(lambda _t, key=incident_id: self.advancing.pop(key, None))

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

    async def closed_idle(self, incident_id: str, status: str) -> None:
        self._looked.pop(incident_id, None)
        self.finished(incident_id)
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
        self.finished(incident_id)  # after the page: the page is a step of the incident's, fenced by its lease

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
            self.finished(incident_id)
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
            self.finished(incident_id)
            if values.get("mttr_s") is not None:
                metrics.MTTR.observe(values["mttr_s"])
            if new_status != "merged":
                await self._write_reports(incident_id)

    def finished(self, incident_id: str) -> None:
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
