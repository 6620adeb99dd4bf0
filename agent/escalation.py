"""`Escalator`: pages people as the escalation policy says, until someone acknowledges.

On every `tick` it looks at the open incidents this worker drives (and, on the leader, the escalated
or failed ones that wait for a person), folds each one's decision records
into its on-call state, asks the pure `due_pages` what is due now, and for each page appends an
`incident.paged` record (route, level, repeat, receivers) BEFORE calling `send`. The records are the
memory: a page whose record exists is never sent again, across restarts and workers, so each
(incident, round, level, repeat) pages at most once. A send that fails is recorded as
`incident.page_failed`; the next repeat of the level is the retry.

`send(incident_id, level, receivers, summary)` is whatever delivers pages (the notification
destinations); the policy comes from a `PolicySource`, re-read when its file changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bus import parse_time
from rules import EscalationPolicy, RulesError, Topology, load_escalation

from .audit import AuditLog
from .incident import AWAITS_PERSON, Incident, Page, due_pages
from .oncall import state_of

log = logging.getLogger("rtem.escalation")

Send = Callable[[str, int, tuple[str, ...], str], Awaitable[Any]]

# An escalated or failed incident is paged for until acknowledged or resolved, but not forever: one that
# nobody answered for a day is left to the people already paged (and to Alertmanager's own repeat).
AWAITS_PERSON_FOR_S = 86400.0


class PolicySource(Protocol):
    def current(self) -> EscalationPolicy | None: ...


class FixedPolicy:
    """One policy (or none) for the process's life: tests, `rtem run` without a policy file."""

    def __init__(self, policy: EscalationPolicy | None):
        self.policy = policy

    def current(self) -> EscalationPolicy | None:
        return self.policy


class PolicyFile:
    """The policy in a file, read again when the file changes. A changed file that fails the check is
    refused with its file:line (logged and audited as `escalation.refused`) and the last good policy
    stays; a file that was never good raises at construction, so `rtem run` does not start on it."""

    def __init__(self, path: str | Path, audit: AuditLog | None = None):
        self.path = Path(path)
        self.audit = audit
        self._policy = load_escalation(self.path)
        self._stamp = self._mtime()

    def current(self) -> EscalationPolicy | None:
        stamp = self._mtime()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._policy = load_escalation(self.path)
                log.info("escalation policy %s reloaded (%s)", self.path, self._policy.digest)
            except RulesError as exc:
                log.error("escalation policy refused, the previous one stays: %s", exc)
                if self.audit is not None:
                    self.audit.append("escalation.refused", node="escalation", inputs={"file": str(self.path)},
                                      decision={"kept": self._policy.digest}, reasons=[str(exc)])
        return self._policy

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def policy_source(policy_file: Path | None, audit: AuditLog | None = None) -> PolicySource:
    """The source for `Settings.escalation_policy_file()`: the file, watched; or no policy (None)."""
    return PolicyFile(policy_file, audit) if policy_file is not None else FixedPolicy(None)


class Escalator:
    def __init__(self, policy_source: PolicySource, store, audit: AuditLog, send: Send,
                 clock: Callable[[], datetime], *, topology: Topology | Any = None,
                 drives: Callable[[str], bool] = lambda _incident_id: True,
                 leads: Callable[[], bool] = lambda: True,
                 acknowledged: Callable[[str], Awaitable[Any]] | None = None):
        """`drives(incident_id)`: whether this worker drives the incident (rtem run: it owns its lease);
        `leads()`: whether it pages for the incidents nobody drives any more, escalated or failed ones that
        wait for a person (rtem run: the leader); `acknowledged(incident_id)` tells the destinations
        that someone acknowledged (PagerDuty's acknowledge), once per incident and process;
        `topology` (a Topology, or a source whose `current()` gives the one in force) adds the services an
        incident's instances belong to, for the routes' `services`."""
        self.policy_source = policy_source
        self.store = store
        self.audit = audit
        self.send = send
        self.clock = clock
        self.topology = topology
        self.drives = drives
        self.leads = leads
        self.acknowledged = acknowledged
        self._told_acknowledged: set[str] = set()

    async def tick(self) -> list[tuple[str, Page]]:
        """Send the pages due now; returns them (incident id, page)."""
        policy = self.policy_source.current()
        if policy is None:
            return []
        sent: list[tuple[str, Page]] = []
        for incident in self._paged_for():
            state = state_of(self.audit, incident.id)
            now = self.clock()
            if state.acknowledged_by is not None and self.acknowledged is not None \
                    and incident.id not in self._told_acknowledged:
                self._told_acknowledged.add(incident.id)
                await self.acknowledged(incident.id)
            for page in due_pages(policy, incident, state, now, services=self._services(incident)):
                await self._page(incident, page, state.round, now)
                sent.append((incident.id, page))
        return sent

    def _paged_for(self) -> list[Incident]:
        """The open incidents this worker drives and, on the leader, the recent ones that wait for a person."""
        incidents = [Incident.from_row(row) for row in self.store.active_incidents() if self.drives(row["id"])]
        if self.leads():
            since = self.clock() - timedelta(seconds=AWAITS_PERSON_FOR_S)
            incidents += [incident for status in AWAITS_PERSON for row in self.store.incidents(status=status.value)
                          if parse_time((incident := Incident.from_row(row)).updated_at) >= since]
        return incidents

    async def _page(self, incident: Incident, page: Page, round_: int, now: datetime) -> None:
        summary = _summary(incident, page)
        # Recorded first: a crash after this line loses at most this page, never sends it twice.
        self.audit.append("incident.paged", incident_id=incident.id, node="escalation",
                          inputs={"route": page.route, "level": page.level, "repeat": page.repeat, "round": round_,
                                  "receivers": list(page.receivers), "why": page.why,
                                  "key": page.key(incident.id, round_), "summary": summary},
                          decision={"paged": True, "receivers": list(page.receivers)},
                          reasons=[f"{page.why}: level {page.level + 1} of route {page.route}, unacknowledged"], at=now)
        try:
            await self.send(incident.id, page.level, page.receivers, summary)
        except Exception as exc:  # the destination is down: the next repeat is the retry
            log.warning("incident %s: page to %s failed: %s", incident.id, ", ".join(page.receivers), exc)
            self.audit.append("incident.page_failed", incident_id=incident.id, node="escalation",
                              inputs={"key": page.key(incident.id, round_), "receivers": list(page.receivers)},
                              decision={"paged": False}, reasons=[f"{type(exc).__name__}: {exc}"])

    def _services(self, incident: Incident) -> set[str]:
        services = set(incident.entities)
        topology = self.topology.current() if hasattr(self.topology, "current") else self.topology
        if topology is not None:
            for entity in incident.entities:
                services.update(topology.targets(entity, "instance_of"))
        return services


def _summary(incident: Incident, page: Page) -> str:
    cause = incident.root_causes[0].entity if incident.root_causes else "cause not known yet"
    again = f" (page {page.repeat + 1})" if page.repeat else ""
    return (f"[{incident.severity}] incident {incident.id} on {', '.join(incident.entities[:3]) or '?'}: "
            f"{cause}; {incident.status.value}, unacknowledged{again}")


def send_through(pager) -> Send:
    """`Send` over the notification destinations (agent/notify's `IncidentPager`). A page that no
    destination took raises, so the Escalator records it as failed; with no destination configured the
    page is only logged (as the built-in pager does)."""
    async def send(incident_id: str, level: int, receivers: tuple[str, ...], summary: str) -> None:
        deliveries = await pager.page(incident_id, summary, receivers)
        if not deliveries:
            log.warning("incident %s: page for %s (no notifier configured): %s", incident_id, ", ".join(receivers),
                        summary)
        elif not any(d.ok for d in deliveries):
            raise RuntimeError("no destination took the page: " + "; ".join(
                f"{d.destination.value}: {d.error}" for d in deliveries))
    return send


async def escalate_regularly(escalator: Escalator, stop: asyncio.Event, every_s: float) -> None:
    """`rtem run`'s loop: a tick every `every_s` until `stop`; a failed tick is logged and tried again."""
    while not stop.is_set():
        try:
            await escalator.tick()
        except Exception:
            log.exception("escalation: a tick failed; trying again")
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass
