"""`IncidentPager`: what `rtem run` tells the destinations as its incidents move, and when.

A status change after the diagnosis triggers (or resolves) at every destination; while an incident stays
open, its Alertmanager alert is posted again every `refresh_s`, so it stays firing only as long as an rtem
keeps it alive. Only the worker that drives an incident calls `changed` for it, so with several workers
each notice is sent once. Sends run as tasks of their own: a slow destination never holds an incident's
thread; `drain` waits for them on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from rules import Topology

from ..audit import AuditLog
from ..incident import AWAITS_PERSON, IncidentStatus
from ._deliver import Delivery, Notifications
from ._destinations import DIRECT, DestinationName
from ._notice import Notice, NoticeEvent, event_for, notice_from_incident

log = logging.getLogger("rtem.notify")

# Before the diagnosis there is nothing to say.
QUIET = frozenset({IncidentStatus.OPEN.value, IncidentStatus.DIAGNOSING.value})
# Final for rtem, but a person must act: their alerts keep firing (refreshed by the worker that sent them)
# until the store says a person resolved them. After a restart nobody refreshes them: they end by themselves.
NEEDS_PERSON = frozenset(status.value for status in AWAITS_PERSON)


@dataclass(frozen=True)
class Sent:
    """The last notice about one incident: for which status, when (monotonic seconds), and whether every
    destination was told of that status (not so for an incident only kept alive after a takeover)."""

    status: str
    at: float
    everywhere: bool = True


@dataclass(frozen=True)
class Due:
    event: NoticeEvent
    receivers: tuple[str, ...] = ()  # empty: every destination


def due(sent: Sent | None, status: str, now: float, refresh_s: float) -> Due | None:
    """What to send about an incident in `status`, given the last notice: a new status triggers or resolves
    everywhere; an unchanged open one refreshes Alertmanager's alert every `refresh_s`; else nothing."""
    if status in QUIET:
        return None
    event = event_for(status)
    if event == NoticeEvent.RESOLVE:
        return Due(event) if sent is not None else None  # nobody was told it began
    if sent is None or sent.status != status:
        return Due(event)
    if now - sent.at >= refresh_s:
        return Due(NoticeEvent.TRIGGER, (DestinationName.ALERTMANAGER.value,))
    return None


class IncidentPager:
    """`topology` returns the topology in force (it may be reloaded), for the service an entity belongs to."""

    def __init__(self, notifications: Notifications, store, audit: AuditLog, *,
                 topology: Callable[[], Topology | None] | None, public_url: str | None, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.notifications = notifications
        self.store = store
        self.audit = audit
        self.topology = topology
        self.public_url = public_url
        self.refresh_s = refresh_s
        self.clock = clock
        self._sent: dict[str, Sent] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: set[str] = set()  # incidents with a notice in flight: a refresh waits for the next round
        self._adopted: dict[str, float] = {}  # owned incidents not told here, when last looked at
        self._tasks: set[asyncio.Task] = set()

    def changed(self, incident_id: str, status: str) -> None:
        """The incident this worker drives is now in `status`: tell the destinations if that matters."""
        if self.notifications.configured:
            self._spawn(self._send(incident_id, status, changed=True))

    def refresh(self, owned: Iterable[str]) -> None:
        """Post again what is due: the open incidents this worker owns, and those waiting for a person it
        paged about (rtem no longer drives them; the store says when a person resolved one)."""
        if not self.notifications.configured:
            return
        mine = set(owned)
        now = self.clock()
        for incident_id, sent in list(self._sent.items()):
            if (incident_id in mine or sent.status in NEEDS_PERSON) and now - sent.at >= self.refresh_s \
                    and incident_id not in self._busy:
                self._spawn(self._send(incident_id, None))
        # Taken over from another worker, or open before a restart: told before, so only kept alive here.
        for incident_id in mine - set(self._sent) - self._busy:
            if now - self._adopted.get(incident_id, float("-inf")) >= self.refresh_s:
                self._adopted[incident_id] = now
                self._spawn(self._send(incident_id, None, adopt=True))
        for incident_id in set(self._adopted) - mine:
            del self._adopted[incident_id]

    def forget(self, incident_id: str) -> None:
        """Another worker drives it now (or it is gone): stop refreshing it here."""
        self._sent.pop(incident_id, None)
        self._locks.pop(incident_id, None)

    async def acknowledge(self, incident_id: str) -> list[Delivery]:
        """A person took the incident: PagerDuty stops escalating, the others are told who is on it."""
        return await self.notify(incident_id, NoticeEvent.ACKNOWLEDGE)

    async def page(self, incident_id: str | None, summary: str, receivers: Sequence[str] = ()) -> list[Delivery]:
        """A page as a trigger carrying its summary. `receivers` may name destinations (`pagerduty`, `slack`,
        `webhook`, `alertmanager`) and people or rotations (`rotation:payments`), which the destinations are
        told as `oncall`; naming no destination means the direct notifiers (the notify_oncall contract).
        Only configured destinations are asked; none: no delivery (the caller logs the page)."""
        names = {d.value for d in DestinationName}
        named = tuple(r for r in receivers if r in names) or tuple(d.value for d in DIRECT)
        destinations = tuple(r for r in named if r in self.notifications.destinations)
        if not destinations:
            return []
        oncall = tuple(r for r in receivers if r not in names)
        try:
            notice = self._notice(incident_id, NoticeEvent.TRIGGER, destinations) if incident_id else None
        except Exception:  # a page must go out even when its incident cannot be read
            log.exception("incident %s: reading it for a page failed; paging with the summary alone", incident_id)
            notice = None
        if notice is None:
            notice = Notice(incident_id=incident_id or "none", event=NoticeEvent.TRIGGER, status="page",
                            severity="error", service="", root_cause="", fault_type="", summary=summary,
                            cause=summary, opened_at=datetime.now(timezone.utc), receivers=destinations)
        return await self.notifications.notify(replace(notice, summary=summary[:1000], oncall=oncall))

    async def notify(self, incident_id: str, event: NoticeEvent, receivers: Sequence[str] = ()) -> list[Delivery]:
        notice = self._notice(incident_id, event, receivers)
        return await self.notifications.notify(notice) if notice else []

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the notices in flight (on the way out), then cancel the rest."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _send(self, incident_id: str, status: str | None, *, adopt: bool = False,
                    changed: bool = False) -> None:
        lock = self._locks.setdefault(incident_id, asyncio.Lock())
        self._busy.add(incident_id)
        try:
            async with lock:  # one incident's notices go out in the order of its changes
                row = await asyncio.to_thread(self.store.incident, incident_id)
                if row is None:
                    self._sent.pop(incident_id, None)
                    return
                status = row["status"] if status is None else status
                now = self.clock()
                sent = self._sent.get(incident_id)
                if changed and sent is not None and not sent.everywhere and event_for(status) == NoticeEvent.TRIGGER:
                    sent = None  # a change this worker made is news to every destination
                wanted = due(sent, status, now, self.refresh_s)
                if wanted is None:
                    return
                receivers = (DestinationName.ALERTMANAGER.value,) if adopt else wanted.receivers
                everywhere = not receivers or (sent is not None and sent.everywhere and sent.status == status)
                if receivers and not set(receivers) & set(self.notifications.destinations):
                    self._sent[incident_id] = Sent(status, now, everywhere)  # nothing to keep alive here
                    return
                notice = self._notice(incident_id, wanted.event, receivers, row=row)
                if notice is None:
                    return
                await self.notifications.notify(notice)
                self._adopted.pop(incident_id, None)
                if wanted.event == NoticeEvent.RESOLVE:
                    self.forget(incident_id)
                else:
                    self._sent[incident_id] = Sent(status, now, everywhere)
        except Exception:  # never into the incident's thread: the audit log has each delivery's outcome
            log.exception("incident %s: notifying about it failed", incident_id)
        finally:
            self._busy.discard(incident_id)

    def _notice(self, incident_id: str, event: NoticeEvent, receivers: Sequence[str] = (),
                row: dict | None = None) -> Notice | None:
        row = row or self.store.incident(incident_id)
        if row is None:
            return None
        records = self.audit.records(incident_id=row["id"], kind="incident.failed") \
            if row["status"] == IncidentStatus.FAILED.value else []
        return notice_from_incident(row, records, event=event, public_url=self.public_url,
                                    topology=self.topology() if self.topology else None, receivers=receivers)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

