"""The hot path from the bus to the store: dedupe, detect, correlate, record. The bus acks after.

`Triage.handle` is the bus handler. It is plain synchronous work over a batch; the one transaction
at its end is what makes an ack safe.

A resolved alert (`rtem.alert` with `attributes.status: resolved`) is recovery evidence, never a signal:
it is recorded with the incident that the firing alert of the same fingerprint opened or joined, however
long ago that was, and the graph and the service loop read it from there (docs/lifecycle.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from bus import Event
from rules import Correlator, DetectionSet, Detector, Topology

from .db import Connection
from .store import CLOSED_STATUSES, EVENT_COLUMNS, IncidentStore, event_row

log = logging.getLogger("rtem.triage")

INCIDENT = EVENT_COLUMNS.index("incident_id")
DETECTOR_STATE = "detector"
WATERMARK = "watermark"  # event time, saved with each batch for the workers that do not lead
CORRELATOR_STATE = "correlator"


@dataclass
class TriageStats:
    events: int = 0
    duplicates: int = 0
    signals: int = 0
    incidents_opened: int = 0
    incidents_merged: int = 0


@dataclass
class BatchResult:
    """What one batch changed, for whoever reports or audits it after the commit."""

    opened: list[str] = field(default_factory=list)
    merged: list[tuple[str, str]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    quiet: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # closed incidents that took signals observed before they closed


class Triage:
    def __init__(self, store: IncidentStore, detector: Detector, correlator: Correlator,
                 after_commit: Callable[[BatchResult], None] | None = None, *,
                 detections: Callable[[], DetectionSet] | None = None,
                 topology: Callable[[], Topology] | None = None,
                 fence: Callable[[Connection], None] | None = None):
        """`detections`: the detections in force (a hot-reloaded rule set's); when their digest
        changes, triage replaces its own detector before the next batch, keeping the window state.
        `topology`: the topology in force (a reloaded file's); when it changes, triage replaces its
        detector and correlator the same way, keeping their state (open incidents, windows).
        `fence`, called first in each batch's transaction, refuses the batch (raises) when this worker
        no longer leads, so a worker paused past its lease commits nothing — the batch is not acked, and
        the leader gets it (agent/cluster)."""
        self.fence = fence
        self.store = store
        self.detector = detector
        self.correlator = correlator
        self.after_commit = after_commit
        self.detections = detections
        self.topology = topology
        self.stats = TriageStats()
        self._stale = False  # a batch failed after it moved the in-memory state: restore before going on
        self.restore()

    def restore(self) -> None:
        """Pick up window and incident state where the last process left it.

        The service loop closes incidents between batches (`Correlator.release`); the state saved by
        the last batch does not know of a close made after it, so the store's status decides. Event time
        has not moved since that batch, so its watermark is when such an incident closed."""
        self.detector.restore(self.store.load_state(DETECTOR_STATE, {}))
        self.correlator.restore(self.store.load_state(CORRELATOR_STATE, []))
        self.correlator.watermark = self.detector.watermark
        self.release_closed()
        self._stale = False

    @property
    def watermark(self) -> float:
        """Event time as the last committed batch left it. After a failed batch the detector has seen
        events that were not recorded (they come back): until the next batch restores the state, its
        watermark would judge incidents ready on evidence the store does not hold."""
        return float(self.store.load_state(WATERMARK, 0.0)) if self._stale else self.detector.watermark

    def release_closed(self, active: set[str] | None = None) -> list[str]:
        """Stop correlating into incidents the store says are closed — closed by this process's service
        loop after the last batch, or by another worker of a cluster, which drives incidents but does not
        correlate. `active`: ids known to be still active (their rows need not be read)."""
        released = []
        for incident_id in [i for i in self.correlator.open if active is None or i not in active]:
            row = self.store.incident(incident_id)
            if row is not None and row["status"] in CLOSED_STATUSES:
                self.correlator.release(incident_id)
                released.append(incident_id)
        return released

    async def __call__(self, events: list[Event]) -> None:
        self.handle(events)

    def handle(self, events: Sequence[Event]) -> BatchResult:
        """Detect, correlate and record one batch in one transaction. A batch that fails leaves nothing
        recorded and the in-memory state stale: the next batch first restores it from the store."""
        if self._stale:
            self.restore()
        try:
            return self._handle(events)
        except BaseException:
            self._stale = True
            raise

    def _handle(self, events: Sequence[Event]) -> BatchResult:
        self._follow_rules()
        self._follow_topology()
        received = datetime.now(timezone.utc).isoformat()
        known = self.store.known_ids([e.id for e in events])
        result = BatchResult()
        rows = []
        late: dict[str, list[str]] = {}
        firing: dict[tuple[str, str], str] = {}  # (subject, fingerprint) -> incident, for alerts of this batch
        for event in events:
            if event.id in known:
                self.stats.duplicates += 1
                continue
            known.add(event.id)
            incident_id, rules = self._place(event, result, late, firing)
            rows.append(event_row(event, incident_id, rules, received))
        self.correlator.watermark = self.detector.watermark
        # An incident no signal touched for two gaps of event time cannot take new signals (one gap
        # is the correlation limit, the other allows late events): stop scanning it on every event.
        result.quiet = self.correlator.quiet(self.detector.watermark, lateness=self.correlator.gap_s)
        # Released incidents this batch touched are still written below: one that opened and went quiet
        # within a batch would otherwise never reach the store.
        released = {i: inc for i in result.quiet if (inc := self.correlator.release(i)) is not None}
        self.correlator.expire(self.detector.watermark, lateness=self.correlator.gap_s)
        recorded_with = [row[INCIDENT] for row in rows if row[INCIDENT]]
        if result.merged:  # rare: follow each id to its keeper; otherwise count them as they are
            recorded_with = [self._current(incident_id, result) for incident_id in recorded_with]
        added = Counter(recorded_with)
        with self.store.transaction():
            if self.fence:
                self.fence(self.store.db.connection())
            self.store.insert_events(rows)
            for incident_id in result.touched:
                incident = (self.correlator.open.get(incident_id) or released.get(incident_id)
                            or self.correlator.closed.get(incident_id))
                if incident is not None:
                    self.store.upsert_incident(incident.to_state())
            for absorbed, keeper in result.merged:
                self.store.merge(absorbed, keeper)
            for incident_id, event_ids in late.items():
                current = self._current(incident_id, result)
                added[current] += self.store.attach(current, event_ids)
            for incident_id, count in added.items():
                self.store.add_events(incident_id, count)
            self.store.save_state(DETECTOR_STATE, self.detector.state())
            self.store.save_state(WATERMARK, self.detector.watermark)
            self.store.save_state(CORRELATOR_STATE, self.correlator.state())
        self.stats.events += len(rows)
        for incident_id in result.late:
            log.info("incident %s: took signals observed before it closed (redelivered late, after a "
                     "restart?); it stays closed", incident_id)
        if self.after_commit:
            self.after_commit(result)
        return result

    def _place(self, event: Event, result: BatchResult, late: dict[str, list[str]],
               firing: dict[tuple[str, str], str]) -> tuple[str | None, Sequence[str]]:
        signals = self.detector.observe(event)  # always observed: its time is event time all the same
        # Only an alert has a fingerprint or says it resolved: other events (most) skip both reads.
        alert = event.type == "rtem.alert"
        fingerprint = alert_fingerprint(event) if alert else None
        resolution = alert and resolves_alert(event)
        if resolution:
            # Whatever rule matched it, a resolution is not a sign of a disruption. Absences that its
            # time revealed (about other events) still stand.
            signals = [s for s in signals if event.id not in s.event_ids]
        incident_id = None
        for signal in signals:
            assignment = self.correlator.assign(signal)
            incident_id = assignment.incident_id
            result.touched.add(incident_id)
            if assignment.opened:
                result.opened.append(incident_id)
                self.stats.incidents_opened += 1
            if assignment.closed and incident_id not in result.late:
                result.late.append(incident_id)
            for absorbed in assignment.merged:
                result.merged.append((absorbed, incident_id))
                result.touched.discard(absorbed)
                self.stats.incidents_merged += 1
            earlier = [i for i in signal.event_ids if i != event.id]
            if earlier:
                late.setdefault(incident_id, []).extend(earlier)
        self.stats.signals += len(signals)
        if fingerprint is not None:
            key = (event.subject, fingerprint)
            if resolution:
                incident_id = (firing.get(key) or self.store.alert_incident(event.subject, fingerprint, event.ts)
                               or incident_id)
            elif incident_id is not None and any(event.id in s.event_ids for s in signals):
                firing[key] = incident_id
        if incident_id is None:
            incident_id = self.correlator.find(event.subject, event.ts)
        return incident_id, [s.rule for s in signals] if signals else ()

    def _follow_rules(self) -> None:
        current = self.detections() if self.detections is not None else self.detector.detections
        if current.digest == self.detector.detections.digest:
            return
        detector = Detector(current, self.detector.topology)
        detector.restore(self.detector.state())
        replaced, self.detector = self.detector, detector
        replaced.close()  # only triage judges with it, on this thread
        log.info("detections %s in force (were %s)", current.digest, replaced.detections.digest)

    def _follow_topology(self) -> None:
        current = self.topology() if self.topology is not None else self.correlator.topology
        if current is self.correlator.topology:
            return
        correlator = Correlator(current, self.correlator.gap_s)
        correlator.restore(self.correlator.state())  # open incidents' services and hosts, as the new topology says
        correlator.watermark = self.correlator.watermark
        detector = Detector(self.detector.detections, current)
        detector.restore(self.detector.state())
        replaced, self.detector, self.correlator = self.detector, detector, correlator
        replaced.close()
        log.info("topology %s in force for correlation", current.digest)

    @staticmethod
    def _current(incident_id: str, result: BatchResult) -> str:
        """Follow merges made later in the same batch."""
        for absorbed, keeper in result.merged:
            if absorbed == incident_id:
                incident_id = keeper
        return incident_id


def alert_fingerprint(event: Event) -> str | None:
    """The fingerprint of an `rtem.alert` (Alertmanager's, or any producer's), None for other events."""
    fingerprint = event.attributes.get("fingerprint") if event.type == "rtem.alert" else None
    return str(fingerprint) if fingerprint not in (None, "") else None


def resolves_alert(event: Event) -> bool:
    """Whether the event says an alert stopped firing (Alertmanager's `status: resolved`)."""
    return event.type == "rtem.alert" and event.attributes.get("status") == "resolved"
