"""Ranking root-cause candidates from signals and the topology.

The score of an entity is the evidence that it, rather than something it depends on or something that
runs on it, is where the incident started. Four ideas make it up, each a few lines below:

1. Distinctiveness. An anomaly kind seen on many parts of the system at once (memory creeping up on
   every container) is a common-mode effect or background noise; one seen on a single service or host is
   a fingerprint. Each kind is weighted by its self-information within the incident,
   ``log((N+1)/spread) / log(N+1)``: 1 when one unit of N shows it, near 0 when all do. Units are
   services (instances of one service count once, so a service-wide fault is not mistaken for noise)
   or hosts or other components, each compared only with its own kind.
2. Timing. Causes precede effects: an anomaly first seen `ONSET_HALF_LIFE` after the first anomaly of
   its source counts half. Sources are timed separately because they sample differently.
3. Explaining away along the topology. A host's CPU or disk anomaly is shared with the containers on it
   that show the same resource anomaly (their load is the host's load); a service's latency or errors
   are passed on to what it calls or uses when those show symptoms too (a callee's fault surfaces in its
   callers). The callers keep only their share.
4. Aggregation. A service is scored by its own signals plus the mean score of its instances, so it
   ranks above them only when they are anomalous together; a host gains from its instances only when
   they are anomalous more often than instances elsewhere. An instance that stands out from its peers
   in the anomalous traces its callers see gains up to `TRACE_WEIGHT`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rules.topology import Topology

from ._catalog import RESOURCE_DOMAINS, SYMPTOM_DOMAINS, fault_type_of
from ._signals import CHANGE, TRACE, Signal, first_by_kind

# Anomalies first seen this many seconds after the first anomaly of their source count half. Five
# minutes is a few scrape intervals: long enough for a fault to show on several metrics of its own
# entity, short enough that effects propagating through callers and hosts rank behind it.
ONSET_HALF_LIFE = 300.0

# An instance whose callers see far more anomalous calls than its peers' callers do gains up to this
# much: as much as one distinctive metric anomaly. Traces only say "slow here or below", so they do not
# outweigh the entity's own metrics.
TRACE_WEIGHT = 1.0

# A deployment or configuration change followed by anomalies on the changed entity or next to it counts
# like one and a half distinctive anomalies: changes are the most common cause of incidents, but a
# change is also routine, so it must be backed by anomalies to rank.
CHANGE_WEIGHT = 1.5
import os
HOST_SHARING = os.environ.get("HS", "count")
DOMAIN_VOTE = os.environ.get("DV", "max")


@dataclass
class Candidate:
    """One entity's case for being the root cause, with what the explanation needs."""

    entity: str
    entity_type: str
    score: float = 0.0
    prior: float = 0.0
    fault_type: str = "unknown"
    domains: dict[str, float] = field(default_factory=dict)
    evidence: list[tuple[float, Signal]] = field(default_factory=list)
    onset: float | None = None
    notes: list[str] = field(default_factory=list)


def rank_candidates(signals: Sequence[Signal], topology: Topology) -> list[Candidate]:
    """Every topology entity with evidence, best first (ties broken by onset, then id)."""
    if not signals:
        return []
    scorer = _Scorer(signals, topology)
    candidates = scorer.score()
    return sorted(candidates, key=lambda c: (-(c.score + c.prior), c.onset if c.onset is not None else math.inf, c.entity))


class _Scorer:
    def __init__(self, signals: Sequence[Signal], topology: Topology):
        self.topology = topology
        self.state = [s for s in first_by_kind(signals).values() if s.source not in (TRACE, CHANGE)]
        self.traces = [s for s in signals if s.source == TRACE]
        self.changes = [s for s in signals if s.source == CHANGE]
        self.first_ts = _first_by_source(signals)
        self.surprise = _surprise_table(self.state, topology)
        self.own: dict[str, dict[str, list[tuple[float, Signal]]]] = defaultdict(lambda: defaultdict(list))
        for s in self.state:
            self.own[s.entity][s.domain].append((self._value(s), s))

    def _value(self, s: Signal) -> float:
        key = (_population(self.topology, s.entity), s.kind)
        return self.surprise.get(key, _MAX_SURPRISE) * self._timing(s) * s.weight

    def _timing(self, s: Signal) -> float:
        lag = max(0.0, s.ts - self.first_ts[s.source])
        return 0.5 ** (lag / ONSET_HALF_LIFE)

    # -- the four ideas ----------------------------------------------------------------------------

    def score(self) -> list[Candidate]:
        topo = self.topology
        cands: dict[str, Candidate] = {}
        for entity in set(self.own) | {s.entity for s in self.traces} | {s.entity for s in self.changes}:
            cands[entity] = self._own_candidate(entity)
        self._explain_hosts(cands)
        self._propagate_symptoms(cands)
        self._add_trace_outliers(cands)
        self._add_changes(cands)
        for entity in list(cands):
            if topo.entity_type(entity) == "instance":
                for parent in (topo.service_of(entity), topo.host_of(entity)):
                    if parent and parent != entity and parent not in cands:
                        cands[parent] = Candidate(parent, topo.entity_type(parent) or "unknown")
        instance_scores = {e: c.score for e, c in cands.items() if c.entity_type == "instance"}
        for cand in cands.values():
            if cand.entity_type == "host":
                self._aggregate_host(cand, instance_scores, cands)
            elif cand.entity_type != "instance":
                self._aggregate_service(cand, instance_scores, cands)
        sizes = _population_sizes(topo, units=False)
        for cand in cands.values():
            cand.fault_type = self._fault_type(cand)
            cand.prior = -math.log(sizes.get(_population(topo, cand.entity), 1))
        return [c for c in cands.values() if c.score > 0]

    def _own_candidate(self, entity: str) -> Candidate:
        cand = Candidate(entity, self.topology.entity_type(entity) or "unknown")
        for domain, items in self.own.get(entity, {}).items():
            items.sort(key=lambda item: -item[0])
            best = items[0][0] if DOMAIN_VOTE == "max" else sum(v for v, _ in items) / len(items)
            cand.domains[domain] = best
            cand.evidence.extend(items)
        cand.score = sum(cand.domains.values())
        cand.onset = min((s.ts for _, s in cand.evidence), default=None)
        return cand

    def _explain_hosts(self, cands: dict[str, Candidate]) -> None:
        """Idea 3, hosts: a resource anomaly on a host is shared with same-resource anomalies on its instances."""
        for cand in cands.values():
            if cand.entity_type != "host":
                continue
            residents = self.topology.sources(cand.entity, "runs_on")
            for domain in list(cand.domains):
                if domain not in RESOURCE_DOMAINS:
                    continue
                explainers = {i: cands[i].domains[domain] for i in residents if i in cands and domain in cands[i].domains}
                if not explainers:
                    continue
                own = cand.domains[domain]
                kept = 1 / (1 + len(explainers)) if HOST_SHARING == "count" else own / (own + sum(explainers.values()))
                cand.domains[domain] = own * kept
                top = max(explainers, key=explainers.get)
                cand.notes.append(f"its {domain} anomaly is also seen on {len(explainers)} instance(s) on it "
                                  f"(strongest {top}), so {1 - kept:.0%} of it is attributed to them")
            cand.score = sum(cand.domains.values())

    def _propagate_symptoms(self, cands: dict[str, Candidate]) -> None:
        """Idea 3, calls: a component's latency/errors move on to the dependencies that show them too.

        Callers are visited before their callees, so what a caller passes on travels down the chain to
        the deepest dependency that is still symptomatic. A component forwards the share of its symptoms
        that its dependencies' own symptoms can account for (all of it when they are at least as strong).
        """
        topo = self.topology
        own = {e: _symptom(c) for e, c in cands.items() if c.entity_type not in ("instance", "host")}
        received: dict[str, float] = defaultdict(float)
        for entity in _callers_first(topo, [e for e, v in own.items() if v > 0]):
            total = own[entity] + received[entity]
            deps = {d: own.get(d, 0.0) for d in topo.targets(entity, "calls") + topo.targets(entity, "uses")}
            deps = {d: v for d, v in deps.items() if v > 0}
            cand = cands[entity]
            forwarded = min(1.0, sum(deps.values()) / own[entity]) if deps else 0.0
            for dep, value in deps.items():
                received[dep] += total * forwarded * value / sum(deps.values())
            for domain in SYMPTOM_DOMAINS:
                if domain in cand.domains:
                    cand.domains[domain] *= 1 - forwarded
            cand.score = sum(cand.domains.values()) + received[entity] * (1 - forwarded)
            if forwarded:
                cand.notes.append(f"{forwarded:.0%} of its latency/errors are passed on to dependencies that "
                                  f"show them too ({', '.join(sorted(deps))})")
            if received[entity] * (1 - forwarded) > 0:
                cand.notes.append(f"callers' latency/errors point at it (+{received[entity] * (1 - forwarded):.2f})")
            cand.domains["latency"] = cand.domains.get("latency", 0.0) + received[entity] * (1 - forwarded)

    def _add_trace_outliers(self, cands: dict[str, Candidate]) -> None:
        """Idea 4, traces: instances whose callers see many more anomalous calls than their peers'."""
        topo = self.topology
        callers: dict[str, set[str]] = defaultdict(set)
        by_callee: dict[str, list[Signal]] = defaultdict(list)
        for s in self.traces:
            if s.caller and s.caller != s.entity:
                callers[s.entity].add(s.caller)
                by_callee[s.entity].append(s)
        for entity, seen_by in callers.items():
            if topo.entity_type(entity) != "instance":
                continue
            peers = [len(callers.get(p, ())) for p in topo.instances(topo.service_of(entity)) if p != entity]
            typical = statistics.median(peers) if peers else 0.0
            excess = len(seen_by) - typical
            if excess <= 0:
                continue
            gain = TRACE_WEIGHT * excess / (excess + typical + 1)
            cand = cands[entity]
            cand.score += gain
            cand.domains["latency"] = cand.domains.get("latency", 0.0) + gain
            signals = sorted(by_callee[entity], key=lambda s: (s.ts, s.event_id))
            cand.evidence.extend((gain / len(signals), s) for s in signals)
            cand.onset = min(cand.onset or math.inf, signals[0].ts)
            cand.notes.append(f"{len(seen_by)} callers see anomalous calls to it ({', '.join(sorted(seen_by)[:4])}"
                              f"{'…' if len(seen_by) > 4 else ''}), against {typical:g} for its peers")

    def _add_changes(self, cands: dict[str, Candidate]) -> None:
        """A change followed by anomalies on the changed entity or one relation away."""
        topo = self.topology
        for change in sorted(self.changes, key=lambda s: s.ts):
            near = topo.blast_radius([change.entity]) | set(topo.instances(change.entity))
            after = [s for s in self.state + self.traces if s.entity in near and s.ts >= change.ts]
            if not after:
                continue
            cand = cands[change.entity]
            cand.score += CHANGE_WEIGHT
            cand.domains[change.domain] = cand.domains.get(change.domain, 0.0) + CHANGE_WEIGHT
            cand.evidence.insert(0, (CHANGE_WEIGHT, change))
            cand.onset = min(cand.onset or math.inf, change.ts)
            cand.notes.append(f"a {change.kind.rsplit('.', 1)[-1]} change at it preceded {len(after)} anomalies "
                              "on it or next to it")

    def _aggregate_service(self, cand: Candidate, instance_scores: dict[str, float],
                           cands: dict[str, Candidate]) -> None:
        """Idea 4: a service is as suspect as its instances are on average, plus its own signals.

        Its own latency/errors are service-wide only as far as its instances are anomalous alike: with
        one instance standing out, they are that instance's doing, and its share moves there.
        """
        instances = self.topology.instances(cand.entity)
        scores = [instance_scores.get(i, 0.0) for i in instances]
        if not instances or max(scores) <= 0:
            return
        anomalous = [i for i in instances if instance_scores.get(i, 0) > 0]
        typical = statistics.median(scores)
        evenness = typical / max(scores)
        symptom = _symptom(cand)
        if symptom > 0 and evenness < 1:
            moved = symptom * (1 - evenness)
            for domain in SYMPTOM_DOMAINS:
                if domain in cand.domains:
                    cand.domains[domain] *= evenness
            for i in anomalous:
                share = moved * instance_scores[i] / sum(scores)
                cands[i].score += share
                cands[i].domains["latency"] = cands[i].domains.get("latency", 0.0) + share
            cand.score -= moved
            leader = max(anomalous, key=lambda i: instance_scores[i])
            cand.notes.append(f"its instances are unevenly anomalous, so {1 - evenness:.0%} of its latency/errors "
                              f"move to them (mostly {leader})")
        cand.score += typical
        for i in anomalous:
            for domain, value in cands[i].domains.items():
                cand.domains[domain] = cand.domains.get(domain, 0.0) + value / len(instances)
            cand.evidence.extend((v / len(instances), s) for v, s in cands[i].evidence)
        cand.onset = min([cand.onset or math.inf] + [cands[i].onset or math.inf for i in anomalous])
        cand.notes.append(f"{len(anomalous)} of its {len(instances)} instances are anomalous "
                          f"(median instance score {typical:.2f})")

    def _aggregate_host(self, cand: Candidate, instance_scores: dict[str, float],
                        cands: dict[str, Candidate]) -> None:
        """Idea 4: a host with its own anomalies gains when its instances are unusually often anomalous."""
        if not any(d in RESOURCE_DOMAINS for d in cand.domains):
            return
        residents = self.topology.sources(cand.entity, "runs_on")
        all_instances = [e for e in self.topology.by_id if self.topology.entity_type(e) == "instance"]
        if not residents or not all_instances:
            return
        share_here = sum(1 for i in residents if instance_scores.get(i, 0) > 0) / len(residents)
        share_all = sum(1 for i in all_instances if instance_scores.get(i, 0) > 0) / len(all_instances)
        enrichment = share_here - share_all
        if enrichment <= 0:
            return
        mean = sum(instance_scores.get(i, 0.0) for i in residents) / len(residents)
        cand.score += enrichment * mean
        cand.notes.append(f"{share_here:.0%} of its instances are anomalous against {share_all:.0%} overall")

    def _fault_type(self, cand: Candidate) -> str:
        for change in (s for _, s in cand.evidence if s.source == CHANGE):
            return change.domain
        resources = {d: v for d, v in cand.domains.items() if d in RESOURCE_DOMAINS}
        if resources:
            return fault_type_of(max(resources, key=lambda d: (resources[d], d)))
        if cand.domains:
            return fault_type_of(max(cand.domains, key=lambda d: (cand.domains[d], d)))
        return "unknown"


_MAX_SURPRISE = math.log(2)


def _callers_first(topology: Topology, entities: Sequence[str]) -> list[str]:
    """`entities` ordered so that a caller comes before what it calls or uses (cycles broken by id)."""
    pending = set(entities)
    order: list[str] = []
    while pending:
        roots = sorted(e for e in pending
                       if not any(c in pending for c in topology.sources(e, "calls") + topology.sources(e, "uses")))
        batch = roots or [min(pending)]
        order.extend(batch)
        pending.difference_update(batch)
    return order


def _symptom(cand: Candidate) -> float:
    return sum(v for d, v in cand.domains.items() if d in SYMPTOM_DOMAINS)


def _first_by_source(signals: Sequence[Signal]) -> dict[str, float]:
    first: dict[str, float] = {}
    for s in signals:
        if s.source not in first or s.ts < first[s.source]:
            first[s.source] = s.ts
    return first


def _population(topology: Topology, entity: str) -> str:
    kind = topology.entity_type(entity)
    return kind if kind in ("instance", "host") else "component"


def _unit(topology: Topology, entity: str) -> str:
    return topology.service_of(entity)


def _surprise_table(state: Sequence[Signal], topology: Topology) -> dict[tuple[str, str], float]:
    """Self-information of each (population, kind) within the incident, normalised to (0, 1]."""
    spread: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in state:
        spread[(_population(topology, s.entity), s.kind)].add(_unit(topology, s.entity))
    sizes = _population_sizes(topology)
    table: dict[tuple[str, str], float] = {}
    for (population, kind), units in spread.items():
        n = max(sizes.get(population, 0), len(units))
        table[(population, kind)] = math.log((n + 1) / len(units))
    return table


def _population_sizes(topology: Topology, units: bool = True) -> dict[str, int]:
    members: dict[str, set[str]] = defaultdict(set)
    for entity in topology.by_id:
        members[_population(topology, entity)].add(_unit(topology, entity) if units else entity)
    return {population: len(group) for population, group in members.items()}
