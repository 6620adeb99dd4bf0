"""The idle policy in `rtem run` (docs/lifecycle.md): an open incident no signal touched for
`idle_close_s` is closed, and a person paged when an alert in it never resolved. The decision is the
pure `incident.age_out`; this module reads the store, records, and pages."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .graph import page_oncall
from .incident import IncidentStatus, Recovery, age_out, alert_states
from .service import Components

log = logging.getLogger("rtem.run")


class IdleCloser:
    """Sweeps the open incidents no thread has started on; `on_closed(incident_id, status)` runs after
    one is closed (the service notes the change and writes the report)."""

    def __init__(self, parts: Components, idle_close_s: float,
                 on_closed: Callable[[str, str], Awaitable[None]]):
        self.parts = parts
        self.idle_close_s = idle_close_s
        self.on_closed = on_closed

    async def sweep(self, rows: list[dict[str, Any]], still_s: float, claim: Callable[[str], bool]) -> None:
        """Over `rows` (the active incidents); `still_s`: how long event time has stood still (wall
        clock); `claim(incident_id)`: whether this worker may close it (no thread of its own or of another
        worker's drives it; it is then this worker's until `on_closed`)."""
        watermark = self.parts.triage.detector.watermark
        for row in rows:
            if row["status"] != IncidentStatus.OPEN:
                continue
            idle = {"last_signal": row["last_ts"], "watermark": watermark, "still_s": still_s,
                    "idle_close_s": self.idle_close_s}
            if age_out(IncidentStatus.OPEN, **idle) is None or not claim(row["id"]):
                continue  # not idle (its alerts need not be read), or driven
            alerts = alert_states(self.parts.store.alert_events(row["id"]))
            recovery = age_out(IncidentStatus.OPEN, **idle, alerts=alerts)
            await self._close(row["id"], recovery, idle)

    async def _close(self, incident_id: str, recovery: Recovery, idle: dict[str, float]) -> None:
        """The record first, then the status, the page, and what the service does after a close."""
        deps = self.parts.graph.deps
        status = recovery.status.value
        self.parts.audit.append("incident.closed", incident_id=incident_id, node="age_out", inputs=idle,
                                decision={"status": status, "aged_out": True}, reasons=[recovery.resolution],
                                versions=deps.versions())
        self.parts.store.save_diagnosis(incident_id, status=status, root_causes=[], actions=[],
                                        versions=deps.versions(), resolution=recovery.resolution)
        self.parts.triage.correlator.release(incident_id)
        if recovery.status == IncidentStatus.ESCALATED:
            try:
                await page_oncall(deps, incident_id, f"rtem escalated incident {incident_id}: {recovery.resolution}",
                                  "escalation")
            except Exception:  # the record and the status stand; the page is best effort
                log.exception("incident %s: paging about its age-out failed", incident_id)
        await self.on_closed(incident_id, status)


class StillClock:
    """How long (wall clock) event time has stood still on a silent bus: no event moved the watermark,
    though the bus was connected and nothing waited on the consumer. The idle policy's stand-in for event
    time (docs/lifecycle.md). A lost connection or a backlog is not silence, so it starts again from zero;
    so does a restart, so an incident gets at least one more full idle period."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.watermark: float | None = None
        self.since = clock()

    def seconds(self, watermark: float, *, silent: bool = True) -> float:
        now = self.clock()
        if watermark != self.watermark or not silent:
            self.watermark, self.since = watermark, now
        return now - self.since
