"""The deterministic, topology-aware root-cause reasoner: the default, and the fallback when no LLM is
configured or the LLM fails.

`diagnose` turns an incident's events into signals, scores every topology entity they implicate
(`_scoring` says how), and returns the best as `RootCause`s whose confidence is the candidate's
posterior share under the scoring model: ``exp(score)`` normalised over all candidates. With a `History`
(learned from earlier incidents, `_history`), anomalies that recur in most earlier incidents are discounted
as background. With a `LearnedModel` (fitted on earlier confirmed causes, `_learned`), the cold-start
ranking is blended with what marked the confirmed causes, by how many there were. `propose` maps the top
cause to remedies from the action catalog. Same events, history and learned model in, same answer out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from agent.models import IncidentView, ReasonerRun, RootCause
from bus import Event
from rules import Proposal, Topology

from ._explain import explain
from ._history import History
from ._learned import LearnedModel, blend, candidate_features, posterior
from ._remedies import propose_remedies
from ._candidate import Candidate
from ._catalog import fault_type_of
from ._scoring import rank_events
from ._signals import CHANGE

MAX_EVIDENCE = 20


class DeterministicReasoner:
    """Ranks root causes by distinctiveness, timing and explaining-away over the topology."""

    name = "deterministic"
    # Bump when the algorithm changes: it is recorded with every decision in the audit log.
    version = "deterministic-5"  # where a container runs, and what a pod the topology lacks is, from its events

    def diagnose(self, view: IncidentView, limit: int = 5) -> tuple[list[RootCause], ReasonerRun]:
        """The graph's Reasoner protocol: ranked causes, with the history the view carries."""
        learned = view.learned if isinstance(view.learned, LearnedModel) and view.learned.incidents else None
        run = self._run()
        if learned is not None:  # recorded with the decision: what the ranking learned from
            run.notes.append(learned.summary())
            run.versions["learned"] = f"{learned.incidents} confirmed incidents, k={learned.k:g}"
        return self.rank(view.events, view.topology, limit, history=view.history, learned=learned), run

    def propose(self, view: IncidentView, causes: Sequence[RootCause],
                diagnosis: ReasonerRun | None = None) -> tuple[list[Proposal], ReasonerRun]:
        """The graph's Reasoner protocol: remedies for the top cause, chosen with the incident's events."""
        return self.remedies(causes, view.topology, view.events), self._run()

    def rank(self, events: Sequence[Event], topology: Topology, limit: int = 5, *,
             history: History | None = None, learned: LearnedModel | None = None) -> list[RootCause]:
        """Ranked causes; `history` (optional) is the background learned from earlier incidents only, and
        `learned` (optional) what marked the causes confirmed in earlier incidents, blended in by its weight."""
        ranking = rank_events(events, topology, history)
        topology, signals, ranked = ranking.topology, ranking.signals, ranking.ranked
        if not ranked or limit <= 0:
            return []
        for cand in ranked:
            if cand.entity in ranking.described:
                cand.notes.insert(0, f"not in the topology: its events name {ranking.described[cand.entity]} as "
                                     "its service (service.name or its Kubernetes workload), so it is weighed as "
                                     "its instance")
        start = min(s.ts for s in signals)
        shares = posterior([c.rank for c in ranked])
        if learned is None or not learned.incidents:
            return [_root_cause(cand, share, start) for cand, share in zip(ranked[:limit], shares)]
        features = candidate_features(ranked, shares, signals, topology)
        scores = blend(learned, features)
        order = sorted(range(len(ranked)), key=lambda i: (-scores[i], i))
        blended = posterior([scores[i] for i in order])
        return [_root_cause(ranked[i], share, start, learned.why(features[i]))
                for i, share in zip(order[:limit], blended)]

    def fault_kinds(self, events: Sequence[Event], topology: Topology) -> dict[str, set[str]]:
        """Entity → the fault types its evidence supports: the kind of each domain its signals speak of, its
        change's fault (bad_deploy, bad_config) when a change is part of its case, and its own label. The LLM
        reasoner keeps a model's fault type only when it is in this set (agent/llm/_combine.py), so a label
        needs a signal behind it, as a candidate does."""
        kinds: dict[str, set[str]] = {}
        for cand in rank_events(events, topology).ranked:
            found = {fault_type_of(d) for d in cand.domains}
            found |= {s.domain for _, s in cand.evidence if s.source == CHANGE}
            kinds[cand.entity] = (found | {cand.fault_type}) - {"unknown"}
        return kinds

    def remedies(self, causes: Sequence[RootCause], topology: Topology,
                 events: Sequence[Event] | None = None) -> list[Proposal]:
        """Remedies for the top cause; `events` let rollback_deploy check for a deployment and
        open_circuit pick the caller that suffers most."""
        return propose_remedies(causes, topology, events, proposed_by=self.name)

    def _run(self) -> ReasonerRun:
        return ReasonerRun(reasoner=self.name, versions={"reasoner": f"{self.name}/{self.version}"})


def unlisted(entities: Iterable[str], topology: Topology) -> list[str]:
    """An incident's entities that the topology does not hold, sorted: they are never ranked (an anomaly's
    weight needs the entity's type and peers), so a stale topology could hide the cause."""
    return sorted({e for e in entities if e not in topology})


def unlisted_note(missing: Sequence[str], shown: int = 5) -> str | None:
    """`unlisted`'s entities in words, for the record and the terminal; None when there are none."""
    if not missing:
        return None
    names = ", ".join(missing[:shown]) + (f" and {len(missing) - shown} more" if len(missing) > shown else "")
    if len(missing) == 1:
        said = "1 entity of this incident is not in the topology, so its events were not weighed and it cannot"
    else:
        said = (f"{len(missing)} entities of this incident are not in the topology, so their events were not "
                "weighed and none can")
    it = "it" if len(missing) == 1 else "them"
    return (f"{said} be ranked as the cause: {names}; add {it} to the topology (`rtem topology check FILE "
            "--events RECORDING` lists what recordings name that it lacks)")


def described_note(described: Mapping[str, str], shown: int = 5) -> str | None:
    """The incident's entities that the topology lacks but whose events say which service they are instances
    of (`rules.topology.described_by`: weighed as such), in words; None when there are none."""
    if not described:
        return None
    items = list(described.items())
    names = ", ".join(f"{e} ({s})" for e, s in items[:shown]) + (
        f" and {len(items) - shown} more" if len(items) > shown else "")
    count = "1 entity of this incident is" if len(items) == 1 else f"{len(items)} entities of this incident are"
    return (f"{count} not in the topology but weighed as an instance of the service its events name "
            f"(in brackets): {names}; add {'it' if len(items) == 1 else 'them'} to the topology")


def _root_cause(cand: Candidate, share: float, start: float, learned: str = "") -> RootCause:
    explanation = explain(cand, start)
    return RootCause(
        entity=cand.entity,
        fault_type=cand.fault_type,
        confidence=round(min(1.0, max(0.0, share)), 4),
        evidence=_evidence_ids(cand),
        explanation=f"{explanation} Learned: {learned}." if learned else explanation,
    )


def _evidence_ids(cand: Candidate) -> list[str]:
    ids: list[str] = []
    for _, signal in cand.evidence:
        if signal.event_id not in ids:
            ids.append(signal.event_id)
        if len(ids) == MAX_EVIDENCE:
            break
    return ids
