"""Background noise learned from earlier incidents.

Some anomalies show up in almost every incident: a container whose memory always creeps up, a disk that
is always nearly full, a caller that always sees slow calls. Inside one incident such an anomaly looks
exactly like a fault; across incidents it is background. An experienced SRE discounts it ("that one always
fires"), and so does the scorer: `History.recurrence` is how often an anomaly's signal kind appeared in the
incidents that opened before the current one, and `_scoring` counts that as a second way (besides being
common-mode right now) for the anomaly to be background.

A signal kind is (entity, kind, qualifier): the metric's direction, or for a trace anomaly its caller. So a
usually noisy entity showing a *new* kind of anomaly (a drop where it always rises, a metric it never
raised) keeps its full weight. Changes (deploys, configuration) are not anomalies and are never discounted.

Only incidents that opened before the current one, and only their events before it opened, may count: the
store's query enforces it, and `history_from_events` does for callers that hold events themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from bus import Event
from rules.topology import Topology

from ._signals import CHANGE, Signal, extract_signals

# Below this many earlier incidents a recurrence rate is too rough to act on (one incident in four is 25%
# by chance), so history has no effect at all; five is where one coincidence is at most a fifth.
MIN_HISTORY = 5

# How many of the most recent earlier incidents the baseline is learned from: enough to estimate a rate to
# within a few percent, few enough that the query stays bounded and the baseline follows the system as it
# changes (a noisy container that was fixed stops being discounted).
HISTORY_WINDOW = 200

SignalKind = tuple[str, str, str]


def signal_kind(signal: Signal) -> SignalKind:
    """What recurs: the entity, the kind of anomaly, and its direction (metrics) or caller (traces)."""
    return signal.entity, signal.kind, signal.direction or signal.caller or ""


@dataclass(frozen=True)
class History:
    """How many earlier incidents there were, and in how many of them each signal kind appeared."""

    incidents: int = 0
    seen: Mapping[SignalKind, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.incidents >= MIN_HISTORY

    def recurrence(self, signal: Signal) -> float:
        """The share of earlier incidents with this signal kind, counting the current one as a possible
        exception (add-one in the denominator, as the in-incident spread does): a kind seen in every one
        of 40 earlier incidents keeps 1/41 of its weight instead of none."""
        if not self.active or signal.source == CHANGE:
            return 0.0
        return self.seen.get(signal_kind(signal), 0) / (self.incidents + 1)

    def weight(self, signal: Signal) -> float:
        """The chance that an anomaly is not habitual background: 1 - recurrence (1 with no history)."""
        return 1.0 - self.recurrence(signal)

    def describe(self, signal: Signal) -> str:
        what = f"{signal.kind} {signal.direction}" if signal.direction else signal.kind
        where = f"on {signal.entity}" if not signal.caller else f"from {signal.caller} to {signal.entity}"
        return (f"{what} {where} appears in {self.seen.get(signal_kind(signal), 0)} of {self.incidents} earlier "
                "incidents")


def shape_kinds(event: Event, topology: Topology) -> tuple[SignalKind, ...]:
    """The signal kinds one earlier event (shape) counts as: its anomalies, never a change."""
    return tuple(signal_kind(s) for s in extract_signals((event,), topology) if s.source != CHANGE)


def learn_history(incidents: Collection[str], shapes: Iterable[tuple[Event, Iterable[str]]],
                  topology: Topology) -> History:
    """The baseline from earlier incidents given as distinct event shapes, each with the incidents it
    occurred in (what `IncidentStore.past_event_shapes` returns). Pure: same input, same history."""
    return history_of(kinds_by_incident(incidents, shapes, topology))


def kinds_by_incident(incidents: Collection[str], shapes: Iterable[tuple[Event, Iterable[str]]],
                      topology: Topology) -> dict[str, set[SignalKind]]:
    """Each of `incidents` with the signal kinds its shapes count as (none for one with no shape). Entities
    the topology lacks count when their events say which service they are instances of, as in a diagnosis
    (`Topology.with_described`): a pod a rollout renamed has a past too."""
    found: dict[str, set[SignalKind]] = {incident: set() for incident in incidents}
    shapes = list(shapes)
    topology = topology.with_described(event for event, _ in shapes)
    for event, seen_in in shapes:
        kinds = shape_kinds(event, topology)
        for incident in seen_in:
            if incident in found:
                found[incident].update(kinds)
    return found


def history_of(kinds: Mapping[str, Collection[SignalKind]]) -> History:
    """The baseline from earlier incidents, each given as the signal kinds it showed."""
    return History(len(kinds), dict(Counter(kind for seen in kinds.values() for kind in seen)))


def history_from_events(past: Mapping[str, Iterable[Event]], topology: Topology, before: float) -> History:
    """The baseline from earlier incidents' events (incident id → events), counting only events before
    `before`, the current incident's start; incidents with none left do not count."""
    shapes = [(event, (incident,)) for incident, events in past.items() for event in events if event.ts < before]
    return learn_history({incident for _, (incident,) in shapes}, shapes, topology)
