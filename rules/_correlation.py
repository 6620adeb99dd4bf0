"""Correlation: which signals belong to the same incident.

Two signals belong together when they are close in event time (within `gap_s` of the incident's
span) and close in the topology: the same entity, the same service, services one `calls`/`uses`
hop apart, or a host and the instances running on it. Two instances merely sharing a host are
not linked: on a busy host that would tie every fault to every other. A storm of alerts from one fault stays inside that
neighbourhood and becomes one incident; faults in unrelated parts of the system stay apart. When a
signal links several open incidents, they are merged into the oldest.

Topologies are never complete: an entity the topology does not know, or knows with no relation at
all (a host with no recorded workload), cannot be placed, so for it time is the only evidence. Such
a signal joins the largest incident open at that time, and never merges incidents.

A closed incident (released: remediated, escalated, aged out) takes no new signal, with one exception:
a signal observed before it closed, in event time, that arrives after it. After a crash the bus
redelivers what the dead process held unacked only once the ack wait ran out, behind newer events; by
then event time may have moved on far enough for the incident to be remediated and closed. Those
signals are the same fault, not a new one, and a second incident would remediate it again. A signal
observed after the close is a recurrence and opens a new incident. Closed incidents are forgotten
when an open one would have gone quiet (`expire`).

Incident ids derive from the first signal's event id, so a replay gives the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bus import SEVERITY_RANK

from ._detection import Signal
from .topology import Topology

LINKS = ("calls", "uses")


@dataclass
class OpenIncident:
    id: str
    first_ts: float
    last_ts: float
    severity: str = "warning"
    entities: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    placements: set[str] = field(default_factory=set)
    detections: set[str] = field(default_factory=set)
    signals: int = 0
    closed_at: float | None = None  # the event time it was released at; None while it is open

    def to_state(self) -> dict[str, Any]:
        state = {"id": self.id, "first_ts": self.first_ts, "last_ts": self.last_ts, "severity": self.severity,
                 "entities": sorted(self.entities), "detections": sorted(self.detections),
                 "signals": self.signals}
        if self.closed_at is not None:
            state["closed_at"] = self.closed_at
        return state


@dataclass(frozen=True)
class Assignment:
    incident_id: str
    opened: bool = False
    merged: tuple[str, ...] = ()
    closed: bool = False  # a late signal that joined an incident already closed


class Correlator:
    def __init__(self, topology: Topology, gap_s: float = 300.0):
        self.topology = topology
        self.gap_s = gap_s
        self.open: dict[str, OpenIncident] = {}
        self.closed: dict[str, OpenIncident] = {}
        # Event time as triage last saw it (its watermark): what a release between batches is dated.
        self.watermark = 0.0

    def assign(self, signal: Signal) -> Assignment:
        """Put a signal into the incident it belongs to, opening or merging incidents as needed."""
        near = [inc for inc in self.open.values() if self._near(inc, signal.ts)]
        if near and not self._placed(signal.entity):
            largest = max(near, key=lambda inc: (inc.signals, -inc.first_ts))
            self._add(largest, signal)
            return Assignment(largest.id)
        related = [inc for inc in near if self._linked(inc, signal.entity)]
        if not related and (closed := self._closed_before(signal)) is not None:
            self._add(closed, signal)
            return Assignment(closed.id, closed=True)
        if not related:
            incident = OpenIncident(id=incident_id(signal.event_ids[0]), first_ts=signal.ts, last_ts=signal.ts,
                                    severity=signal.severity)
            self.open[incident.id] = incident
            self._add(incident, signal)
            return Assignment(incident.id, opened=True)
        related.sort(key=lambda inc: (inc.first_ts, inc.id))
        keeper, absorbed = related[0], related[1:]
        for other in absorbed:
            self._absorb(keeper, other)
        self._add(keeper, signal)
        return Assignment(keeper.id, merged=tuple(o.id for o in absorbed))

    def find(self, entity: str, ts: float) -> str | None:
        """The incident that already covers this entity at this time, for context events: an open one,
        or a closed one the event predates."""
        for inc in self.open.values():
            if self._near(inc, ts) and entity in inc.entities:
                return inc.id
        for inc in self.closed.values():
            if ts <= inc.closed_at and self._near(inc, ts) and entity in inc.entities:
                return inc.id
        return None

    def quiet(self, watermark: float, lateness: float = 0.0) -> list[str]:
        """Incidents no signal has touched for `gap_s` (+ `lateness`) of event time: complete pictures."""
        return [inc.id for inc in self.open.values() if watermark - inc.last_ts > self.gap_s + lateness]

    def release(self, incident_id: str) -> OpenIncident | None:
        """Stop correlating new signals into an incident (it is being closed), as of `watermark`; it
        still takes the late ones observed before then."""
        incident = self.open.pop(incident_id, None)
        if incident is not None:
            incident.closed_at = self.watermark
            self.closed[incident_id] = incident
        return incident

    def expire(self, watermark: float, lateness: float = 0.0) -> None:
        """Forget closed incidents that no late signal can join any more: event time has gone `lateness`
        past the later of their close and the end of their correlation window (the rule of `quiet`). From
        the close, not only from the last signal: an incident opened by events redelivered long after
        newer ones is released at once (it is quiet by the watermark), and the rest of its batch's
        redelivery, a moment later, must still find it rather than open a second incident."""
        for incident_id in [i for i, inc in self.closed.items()
                            if watermark - max(inc.closed_at or inc.last_ts, inc.last_ts + self.gap_s) > lateness]:
            del self.closed[incident_id]

    def state(self) -> list[dict[str, Any]]:
        """Open and closed incidents as JSON-able data, to persist across restarts."""
        return [inc.to_state() for inc in (*self.open.values(), *self.closed.values())]

    def restore(self, states: list[dict[str, Any]]) -> None:
        """Replace what is held with saved `state()`: a leader taking over drops what it held before."""
        self.open, self.closed = {}, {}
        for state in states:
            inc = OpenIncident(id=state["id"], first_ts=state["first_ts"], last_ts=state["last_ts"],
                               severity=state.get("severity", "warning"), signals=state.get("signals", 0),
                               detections=set(state.get("detections", [])), closed_at=state.get("closed_at"))
            for entity in state.get("entities", []):
                self._cover(inc, entity)
            (self.open if inc.closed_at is None else self.closed)[inc.id] = inc

    def _closed_before(self, signal: Signal) -> OpenIncident | None:
        """The closed incident a late signal belongs to: observed before the close, near and linked."""
        late = [inc for inc in self.closed.values()
                if signal.ts <= inc.closed_at and self._near(inc, signal.ts) and self._linked(inc, signal.entity)]
        return min(late, key=lambda inc: (inc.first_ts, inc.id), default=None)

    def _placed(self, entity: str) -> bool:
        return entity in self.topology and bool(self.topology.neighbours(entity))

    def _near(self, inc: OpenIncident, ts: float) -> bool:
        return inc.first_ts - self.gap_s <= ts <= inc.last_ts + self.gap_s

    def _linked(self, inc: OpenIncident, entity: str) -> bool:
        if entity in inc.entities:
            return True
        topo = self.topology
        if entity not in topo:
            return False
        service = topo.service_of(entity)
        if service in inc.services:
            return True
        if any(n in inc.services for rel in LINKS for n in (*topo.targets(service, rel), *topo.sources(service, rel))):
            return True
        if topo.entity_type(entity) == "host":
            return entity in inc.placements
        host = topo.host_of(entity)
        return host is not None and host in inc.hosts

    def _add(self, inc: OpenIncident, signal: Signal) -> None:
        inc.first_ts = min(inc.first_ts, signal.ts)
        inc.last_ts = max(inc.last_ts, signal.ts)
        inc.signals += 1
        inc.detections.add(signal.rule)
        if SEVERITY_RANK.get(signal.severity, 0) > SEVERITY_RANK.get(inc.severity, 0):
            inc.severity = signal.severity
        self._cover(inc, signal.entity)

    def _cover(self, inc: OpenIncident, entity: str) -> None:
        inc.entities.add(entity)
        topo = self.topology
        inc.services.add(topo.service_of(entity))
        if topo.entity_type(entity) == "host":
            inc.hosts.add(entity)
        elif (host := topo.host_of(entity)) is not None:
            inc.placements.add(host)

    def _absorb(self, keeper: OpenIncident, other: OpenIncident) -> None:
        keeper.first_ts = min(keeper.first_ts, other.first_ts)
        keeper.last_ts = max(keeper.last_ts, other.last_ts)
        keeper.signals += other.signals
        keeper.detections |= other.detections
        for entity in other.entities:
            self._cover(keeper, entity)
        if SEVERITY_RANK.get(other.severity, 0) > SEVERITY_RANK.get(keeper.severity, 0):
            keeper.severity = other.severity
        del self.open[other.id]


def incident_id(first_event_id: str) -> str:
    return "inc-" + hashlib.sha256(first_event_id.encode()).hexdigest()[:12]
