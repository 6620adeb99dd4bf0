"""Ranking root-cause candidates from signals and the topology.

A candidate's score is a log-likelihood-style weight of evidence (in nats) that the incident started at
that entity rather than elsewhere. Five ideas make it up:

1. Distinctiveness. An anomaly kind seen on many parts of the system at once (memory creeping up on every
   container) is common-mode or background; one seen on a single unit is a fingerprint. An anomaly
   weighs ``log((N+1)/spread)``: minus the log of its leave-one-out, add-one base rate among the N units
   of its population in this incident. Populations are instances (grouped by service, so a fault shared
   by all instances of one service is still distinctive), hosts, and other components. Correlated
   measurements of one resource (reads and writes, MB and packets) count once: each domain contributes
   its strongest kind.
2. Timing. Causes precede effects: an anomaly first seen `ONSET_HALF_LIFE` after the first anomaly of
   its source counts half. Sources are timed separately because they sample differently.
3. Explaining away along the topology, judged on strength rather than onset (service-level aggregates
   of a callee often cross their thresholds after those of its busier callers):
   - a host's resource anomaly is shared with the strongest same-resource, same-direction anomaly on an
     instance running on it (a container's load is part of its host's load, not the reverse);
   - a component's latency/errors move on to the dependencies it calls or uses that show latency/errors
     too, as far as those account for them, competing with the component's own instances' resource
     anomalies as the explanation (who calls whom: the topology's `calls` and `uses`, and the calls
     the traces show, instance to instance, read as service to service: `_populations.CallGraph`);
   - a service's latency/errors move to its instances as far as they are unevenly anomalous;
   - a trace anomaly is evidence about its callee, weighed like any anomaly by idea 1 (kind
     "trace:latency" or "trace:errors"), of which the callee keeps ``in / (in + out)``: in its reporters,
     out the troubled callees it reports itself (`_populations.relayed`; the traces' own call graph, so
     it works when the topology knows no calls and with one instance per service).
4. Aggregation. A service counts its own signals plus its typical instance: it is suspect as a whole
   only when its instances are anomalous alike. The typical instance is the lower median, the score more
   than half of its instances reach (the one of one, both of two, two of three, three of four); the mean
   of two would hand a service half of its one faulty instance's evidence. A host
   with resource anomalies of its own gains by how much its instances' mean score exceeds all instances'.
   A change (deploy, config) followed by anomalies next to it adds `CHANGE_WEIGHT`.
5. Levels. Each entity gets the prior ``-log(size of its population)``: the levels (instance, host,
   component) are equally likely a priori, so the level with the most entities does not win by numbers.

Across incidents (optional `History`, see `_history`): an anomaly is background either because it is
common-mode now (idea 1's chance ``b = spread/(N+1)``) or because it is habitual on its entity (``r``, the
add-one share of earlier incidents that had it). Taking the two as independent sources of background
(noisy-OR), the anomaly is background with chance ``1 - (1 - b)(1 - r)`` and weighs minus the log of that:
with no history (r = 0) exactly idea 1's ``log((N+1)/spread)``. Every use of the anomaly's strength above
follows (its own value, what it explains away). docs/reasoning.md lists every weight and why.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bus import Event
from rules.topology import Topology, described_by, residency_said

from ._candidate import Candidate, fault_type, symptom
from ._catalog import RESOURCE_DOMAINS, SYMPTOM_DOMAINS
from ._history import History
from ._populations import (HOST, INSTANCE, CallGraph, callers_first, first_by_source, population, population_sizes,
                           relayed, same_flow, spread_of)
from ._signals import CHANGE, TRACE, Signal, extract_signals, first_by_kind

# Anomalies first seen this many seconds after the first anomaly of their source count half. Five
# minutes is a few scrape intervals: long enough for a fault to show on several metrics of its own
# entity, short enough that effects propagating through callers and hosts rank behind it.
ONSET_HALF_LIFE = 300.0

# A deployment or configuration change followed by anomalies on the changed entity or next to it weighs
# as much as a distinctive anomaly (ln 13 for one unit in twelve): changes are the most common cause of
# incidents, but they are also routine, so one must be backed by anomalies to count at all.
CHANGE_WEIGHT = 2.5

@dataclass(frozen=True)
class Ranking:
    """An incident's candidates, best first, with the signals and the topology they were ranked on."""

    topology: Topology  # the topology with the instances the events describe (`Topology.with_described`)
    described: dict[str, str]  # those instances: entity → its service
    signals: list[Signal]
    ranked: list[Candidate]


def rank_events(events: Sequence[Event], topology: Topology, history: History | None = None) -> Ranking:
    """The one way an incident's events are ranked (a diagnosis, the fault types the LLM may use, a
    learning example): the instances the topology lacks that their events describe are added, and where
    the events say entities run (`rules.topology.residency_said`) is read beside the topology's `runs_on`."""
    described = described_by(events, topology)
    topology = topology.with_instances(described)
    signals = extract_signals(events, topology)
    placed = {e: h for e, h in residency_said(events, topology).items() if topology.host_of(e) is None}
    return Ranking(topology, described, signals, rank_candidates(signals, topology, history, placed))


def rank_candidates(signals: Sequence[Signal], topology: Topology, history: History | None = None,
                    placed: Mapping[str, str] | None = None) -> list[Candidate]:
    """Every topology entity with evidence, best first (ties broken by onset, then id). `placed`: entity →
    host, for entities the topology places on no host and their events do (`rank_events`)."""
    if not signals:
        return []
    candidates = _Scorer(signals, topology, history or History(), placed or {}).score()
    for cand in candidates:
        cand.rank = cand.score + cand.prior
    return sorted(candidates, key=lambda c: (-c.rank, c.onset if c.onset is not None else math.inf, c.entity))


class _Scorer:
    def __init__(self, signals: Sequence[Signal], topology: Topology, history: History, placed: Mapping[str, str]):
        self.topology = topology
        self.history = history
        # Traces are state like any other anomaly (about the callee: "slow or failing here or below"),
        # weighed by their rarity; what the callee passes on to its own callees is taken off (`relayed`).
        state = sorted((s for s in first_by_kind(signals).values() if s.source != CHANGE),
                       key=lambda s: (s.ts, s.event_id))
        self.traces = [s for s in signals if s.source == TRACE]
        self.changes = [s for s in signals if s.source == CHANGE]
        self.kept = relayed(self.traces)
        self.calls = CallGraph(topology, self.traces)
        self.first_ts = first_by_source(signals)
        self.spread = spread_of(state, topology)
        self.sizes = population_sizes(topology, by_unit=True)
        self.common_mode = {key: len(units) / (max(self.sizes.get(key[0], 0), len(units)) + 1)
                            for key, units in self.spread.items()}
        self.state = state
        # Host → the entities only the events place there. Only anomalous entities have events, so this is
        # never all of a host's residents: it serves what needs the anomalous ones (a host's anomaly shared
        # with a container on it), and host enrichment compares them with all entities placed so.
        self.placed: dict[str, tuple[str, ...]] = {}
        for entity, host in sorted(placed.items()):
            self.placed[host] = self.placed.get(host, ()) + (entity,)
        self.own: dict[str, list[Signal]] = defaultdict(list)
        for s in state:
            self.own[s.entity].append(s)
        self.host_notes: dict[str, list[str]] = {}
        self.all_instances = [e.id for e in topology.entities if e.type == INSTANCE]

    def strength(self, s: Signal) -> float:
        """Idea 1: how much one anomaly says, regardless of when it came."""
        common = self.common_mode[(population(self.topology, s.entity), s.kind)]
        background = 1.0 - (1.0 - common) * self.history.weight(s)
        return -math.log(background) * s.weight

    def value(self, s: Signal) -> float:
        """Ideas 1 and 2: what one anomaly adds to its entity's score (a trace's, as far as it is not relayed)."""
        lag = max(0.0, s.ts - self.first_ts[s.source])
        kept = self.kept.get(s.entity, 1.0) if s.source == TRACE else 1.0
        return self.strength(s) * kept * 0.5 ** (lag / ONSET_HALF_LIFE)

    def score(self) -> list[Candidate]:
        topo = self.topology
        entities = set(self.own) | {s.entity for s in self.traces} | {s.entity for s in self.changes}
        for entity in list(entities):
            if topo.entity_type(entity) == INSTANCE:
                entities.update(p for p in (topo.service_of(entity), topo.host_of(entity)) if p and p != entity)
        cands = {e: self._own_candidate(e) for e in entities}
        self._propagate_symptoms(cands)
        self._add_changes(cands)
        instance_scores = {e: c.score for e, c in cands.items() if c.entity_type == INSTANCE}
        sizes = population_sizes(topo, by_unit=False)
        for cand in cands.values():
            if cand.entity_type == HOST:
                self._aggregate_host(cand, instance_scores)
            elif cand.entity_type != INSTANCE:
                self._aggregate_service(cand, instance_scores, cands)
        for cand in cands.values():
            cand.fault_type = fault_type(cand)
            cand.prior = -math.log(sizes.get(population(topo, cand.entity), 1))
        return [c for c in cands.values() if c.score > 0]

    # -- an entity's own signals, with hosts explained by their instances ------------------------

    def _own_candidate(self, entity: str) -> Candidate:
        cand = Candidate(entity, self.topology.entity_type(entity) or "unknown")
        kept = self._host_shares(entity) if cand.entity_type == HOST else {}
        for s in self.own.get(entity, ()):
            value = self.value(s) * kept.get(s.kind, 1.0)
            cand.domains[s.domain] = max(cand.domains.get(s.domain, 0.0), value)
            cand.evidence.append((value, s))
        cand.evidence.sort(key=lambda item: (-item[0], item[1].ts, item[1].event_id))
        cand.score = sum(cand.domains.values())
        cand.onset = min((s.ts for s in self.own.get(entity, ())), default=None)
        group = population(self.topology, entity)
        cand.kinds = [(s.kind, len(self.spread[(group, s.kind)]), self.sizes[group])
                      for _, s in cand.evidence]
        self._note_background(cand, self.own.get(entity, ()))
        self._note_traces(cand)
        return cand

    def _note_traces(self, cand: Candidate) -> None:
        reports = [s for s in self.traces if s.entity == cand.entity]
        if not reports:
            return
        reporters = sorted({s.caller or s.entity for s in reports})
        names = ", ".join(reporters[:4]) + (", …" if len(reporters) > 4 else "")
        kept = self.kept.get(cand.entity, 1.0)
        relay = "" if kept == 1.0 else f", {1 - kept:.0%} of it passed on to troubled callees it reports itself"
        cand.notes.append(f"traces from {names} show slow or failing calls to it{relay}")

    def _note_background(self, cand: Candidate, signals: Iterable[Signal], limit: int = 3) -> None:
        """Say which of the candidate's anomalies were discounted as recurring background, most recurrent first."""
        recurring = sorted((s for s in signals if self.history.recurrence(s) > 0),
                           key=lambda s: (-self.history.recurrence(s), s.kind, s.ts))
        if not recurring:
            return
        shown = "; ".join(self.history.describe(s) for s in recurring[:limit])
        more = f" (and {len(recurring) - limit} more)" if len(recurring) > limit else ""
        cand.notes.append(f"{shown}{more}; discounted as recurring background, by how often it recurs")

    def _host_shares(self, host: str) -> dict[str, float]:
        """Idea 3, hosts: the share of each host anomaly its instances' matching anomalies leave it."""
        # The topology's residents, and those only the events place here: an anomaly shared with a container
        # needs only the anomalous residents, and these are the ones whose events say where they run.
        residents = self.topology.sources(host, "runs_on") + self.placed.get(host, ())
        shares: dict[str, float] = {}
        notes: list[str] = []
        for s in self.own.get(host, ()):
            if s.domain not in RESOURCE_DOMAINS:
                continue
            matches = {i: self.strength(r) for i in residents for r in self.own.get(i, ())
                       if r.domain == s.domain and same_flow(r.kind, s.kind)}
            if matches:
                top = max(matches, key=lambda i: (matches[i], i))
                shares[s.kind] = self.strength(s) / (self.strength(s) + matches[top])
                notes.append(f"{s.kind} is matched by {top} on it ({1 - shares[s.kind]:.0%} attributed there)")
        self.host_notes[host] = notes
        return shares

    # -- symptoms along calls --------------------------------------------------------------------

    def _propagate_symptoms(self, cands: dict[str, Candidate]) -> None:
        """Idea 3, calls: a component's latency/errors move on to dependencies that show them too.

        Callers are visited before their callees, so what a caller passes on travels down the chain to
        the deepest dependency that is still symptomatic. Who calls whom is `CallGraph`'s: the
        topology's calls and uses, and the calls the traces show.
        """
        own = {e: self._strength_in(e, SYMPTOM_DOMAINS) for e, c in cands.items()
               if c.entity_type not in (INSTANCE, HOST)}
        received: dict[str, float] = defaultdict(float)
        for entity in callers_first(self.calls, [e for e, v in own.items() if v > 0]):
            cand = cands[entity]
            deps = {d: own.get(d, 0.0) for d in self.calls.callees(entity)}
            deps = {d: v for d, v in deps.items() if v > 0}
            itself = self._typical_instance_strength(entity)
            forwarded = sum(deps.values()) / max(own[entity], itself + sum(deps.values())) if deps else 0.0
            mass = symptom(cand) + received[entity]
            for dep, value in deps.items():
                received[dep] += mass * forwarded * value / sum(deps.values())
            kept_received = received[entity] * (1 - forwarded)
            for domain in SYMPTOM_DOMAINS:
                if domain in cand.domains:
                    cand.domains[domain] *= 1 - forwarded
            if kept_received:
                cand.domains["latency"] = cand.domains.get("latency", 0.0) + kept_received
                callers = [c for c in self.calls.callers(entity) if c in own]
                traced = [c for c in callers if (c, entity) in self.calls.traced]
                seen = (f" ({', '.join(traced)} {'calls' if len(traced) == 1 else 'call'} it as the traces show, "
                        "not the topology)") if traced else ""
                cand.notes.append(f"latency/errors of its callers ({', '.join(callers)}) point at it{seen}")
            if forwarded:
                cand.notes.append(f"{forwarded:.0%} of its latency/errors are explained by dependencies that show "
                                  f"them too ({', '.join(sorted(deps))})")
            cand.score = sum(cand.domains.values())

    def _strength_in(self, entity: str, domains: Iterable[str]) -> float:
        best: dict[str, float] = {}
        for s in self.own.get(entity, ()):
            if s.domain in domains:
                best[s.domain] = max(best.get(s.domain, 0.0), self.strength(s))
        return sum(best.values())

    def _typical_instance_strength(self, entity: str) -> float:
        instances = self.topology.instances(entity)
        if not instances:
            return 0.0
        return statistics.median_low(self._strength_in(i, RESOURCE_DOMAINS) for i in instances)

    # -- traces and changes ----------------------------------------------------------------------

    def _add_changes(self, cands: dict[str, Candidate]) -> None:
        """Idea 4, changes: a change followed by anomalies on the changed entity or one relation away."""
        topo = self.topology
        for change in sorted(self.changes, key=lambda s: (s.ts, s.event_id)):
            near = topo.blast_radius([change.entity]) | set(topo.instances(change.entity))
            signals = [s for s in self.state if s.source != TRACE] + self.traces  # every trace, not its first
            after = [s for s in signals if s.entity in near and s.ts >= change.ts]
            if not after:
                continue
            cand = cands[change.entity]
            cand.score += CHANGE_WEIGHT
            cand.domains[change.domain] = cand.domains.get(change.domain, 0.0) + CHANGE_WEIGHT
            cand.evidence.insert(0, (CHANGE_WEIGHT, change))
            cand.onset = min(cand.onset or math.inf, change.ts)
            what = "deployment" if change.domain == "bad_deploy" else "configuration change"
            cand.notes.append(f"a {what} of it preceded {len(after)} anomalies on it or next to it")

    # -- aggregation -----------------------------------------------------------------------------

    def _aggregate_service(self, cand: Candidate, instance_scores: dict[str, float],
                           cands: dict[str, Candidate]) -> None:
        """Idea 4: a component with instances counts its typical instance (the lower median), and hands
        symptoms to outliers."""
        instances = self.topology.instances(cand.entity)
        scores = [instance_scores.get(i, 0.0) for i in instances]
        if not instances or max(scores) <= 0:
            return
        anomalous = [i for i in instances if instance_scores.get(i, 0.0) > 0]
        typical = statistics.median_low(scores)
        evenness = typical / max(scores)
        leader = max(anomalous, key=lambda i: (instance_scores[i], i))
        symptoms = symptom(cand)
        if symptoms > 0 and evenness < 1:
            moved = symptoms * (1 - evenness)
            for domain in SYMPTOM_DOMAINS:
                if domain in cand.domains:
                    cand.domains[domain] *= evenness
            for i in anomalous:
                share = moved * instance_scores[i] / sum(scores)
                cands[i].score += share
                cands[i].domains["latency"] = cands[i].domains.get("latency", 0.0) + share
            cands[leader].notes.append(f"its service {cand.entity} shows latency/errors, and it is the most "
                                       "anomalous of the service's instances")
            cand.score -= moved
            cand.notes.append(f"its instances are unevenly anomalous (led by {leader}), so {1 - evenness:.0%} of "
                              "its latency/errors are attributed to them")
        cand.score += typical
        for i in anomalous:
            for domain, value in cands[i].domains.items():
                cand.domains[domain] = cand.domains.get(domain, 0.0) + value / len(instances)
            cand.evidence.extend((v / len(instances), s) for v, s in cands[i].evidence)
        cand.evidence.sort(key=lambda item: (-item[0], item[1].ts, item[1].event_id))
        cand.onset = min([cand.onset or math.inf] + [cands[i].onset or math.inf for i in anomalous])
        cand.notes.append(f"{len(anomalous)} of its {len(instances)} instances are anomalous "
                          f"(typical instance score {typical:.2f})")

    def _aggregate_host(self, cand: Candidate, instance_scores: dict[str, float]) -> None:
        """Idea 4: a host with its own anomalies gains what its instances score above the average instance."""
        cand.notes.extend(self.host_notes.get(cand.entity, ()))
        if not any(d in RESOURCE_DOMAINS for d in cand.domains):
            return
        residents, compared = self.topology.sources(cand.entity, "runs_on"), self.all_instances
        if not residents and cand.entity in self.placed:
            # Only the events place them, and only anomalous instances have events: compare the ones placed
            # here with all the ones placed anywhere, not with every instance (the quiet are not seen here).
            residents, compared = self.placed[cand.entity], [i for group in self.placed.values() for i in group]
        if not residents:
            return
        here = sum(instance_scores.get(i, 0.0) for i in residents) / len(residents)
        everywhere = sum(instance_scores.get(i, 0.0) for i in compared) / len(compared)
        if here <= everywhere:
            return
        # The system's own base rate: what runs here is more anomalous than what runs anywhere.
        cand.score += here - everywhere
        anomalous = sum(1 for i in residents if instance_scores.get(i, 0.0) > 0)
        cand.notes.append(f"{anomalous} of its instances are anomalous, scoring {here:.2f} on average against "
                          f"{everywhere:.2f} for all instances")
