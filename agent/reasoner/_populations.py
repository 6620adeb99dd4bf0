"""Who an anomaly is compared with: the populations of the topology (instances grouped by service,
hosts, other components), the order of callers and callees, and when each source first spoke."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from rules.topology import Topology

from ._catalog import flow_of
from ._signals import Signal

INSTANCE, HOST, COMPONENT = "instance", "host", "component"


def same_flow(a: str, b: str) -> bool:
    """Reads explain reads and writes explain writes; a metric that says neither matches both."""
    fa, fb = flow_of(a), flow_of(b)
    return fa is None or fb is None or fa == fb


class CallGraph:
    """Who calls or uses whom among services and components: the topology's `relations` (`calls` and
    `uses` unless told otherwise) and the calls the traces themselves show (a trace from an instance of A
    about an instance of B says that A calls B), so that a topology that lists no calls still has them
    where traces do."""

    def __init__(self, topology: Topology, traces: Iterable[Signal] = (),
                 relations: Sequence[str] = ("calls", "uses")):
        self.out: dict[str, set[str]] = defaultdict(set)
        self.into: dict[str, set[str]] = defaultdict(set)
        self.traced: set[tuple[str, str]] = set()  # calls only the traces show, not the topology
        for entity in topology.by_id:
            for relation in relations:
                for target in topology.targets(entity, relation):
                    self._add(entity, target)
        for s in traces:
            if s.caller:
                source, target = topology.service_of(s.caller), topology.service_of(s.entity)
                if source != target and target not in self.out.get(source, ()):
                    self.traced.add((source, target))
                    self._add(source, target)

    def _add(self, source: str, target: str) -> None:
        if source != target:
            self.out[source].add(target)
            self.into[target].add(source)

    def callees(self, entity: str) -> list[str]:
        return sorted(self.out.get(entity, ()))

    def callers(self, entity: str) -> list[str]:
        return sorted(self.into.get(entity, ()))


def callers_first(calls: CallGraph, entities: Sequence[str]) -> list[str]:
    """`entities` ordered so that a caller comes before what it calls or uses (cycles broken by id)."""
    pending = set(entities)
    order: list[str] = []
    while pending:
        roots = sorted(e for e in pending if not any(c in pending for c in calls.callers(e)))
        batch = roots or [min(pending)]
        order.extend(batch)
        pending.difference_update(batch)
    return order


def first_by_source(signals: Iterable[Signal]) -> dict[str, float]:
    first: dict[str, float] = {}
    for s in signals:
        if s.source not in first or s.ts < first[s.source]:
            first[s.source] = s.ts
    return first


def population(topology: Topology, entity: str) -> str:
    kind = topology.entity_type(entity)
    return kind if kind in (INSTANCE, HOST) else COMPONENT


def spread_of(state: Iterable[Signal], topology: Topology) -> dict[tuple[str, str], set[str]]:
    """Idea 1: the units (instances grouped by service) showing each (population, kind)."""
    spread: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in state:
        spread[(population(topology, s.entity), s.kind)].add(topology.service_of(s.entity))
    return spread


def population_sizes(topology: Topology, by_unit: bool) -> dict[str, int]:
    """How many units (instances grouped by service) or entities each population has."""
    members: dict[str, set[str]] = defaultdict(set)
    for entity in topology.by_id:
        members[population(topology, entity)].add(topology.service_of(entity) if by_unit else entity)
    return {population: len(group) for population, group in members.items()}


def relayed(traces: Iterable[Signal]) -> dict[str, float]:
    """Explaining away along the calls the traces themselves show (no topology needed): an entity that is
    reported slow or failing, and that reports slow or failing calls to others itself, is partly passing
    trouble on. It keeps ``in / (in + out)`` of its trace evidence: in counts the distinct reporters of
    its trouble (its callers, and itself for a span of its own), out the distinct callees it reports. A
    leaf keeps all; a relay with as many anomalous callees as reporters keeps half."""
    reporters: dict[str, set[str]] = defaultdict(set)
    reported: dict[str, set[str]] = defaultdict(set)
    for s in traces:
        reporters[s.entity].add(s.caller or s.entity)
        if s.caller and s.caller != s.entity:
            reported[s.caller].add(s.entity)
    return {e: len(who) / (len(who) + len(reported.get(e, ()))) for e, who in reporters.items()}
