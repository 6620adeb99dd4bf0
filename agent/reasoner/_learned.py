"""What marks a true root cause in this deployment, learned from the causes people confirmed. Pure.

Each candidate of an incident is described by named features a person can read: the kinds of its own signals
(metric anomaly, log error, trace anomaly, health, change), which came first, its metric kinds and log and
trace domains, how many kinds of anomaly it shows, its entity type, its place in the topology among the other
anomalous entities, its timing, where the cold-start ranking put it and how sure it was (`cold:log_share`). A
past incident whose cause was confirmed is one example: all its candidates (the same ones the model is later
applied to), the confirmed one marked as the cause, or, for a confirmed service, it and its instances marked
as one set.

The model is a conditional logit ("which of these candidates is the cause?"): a softmax over the
candidates of an incident of ``log(cold share) + weights · features``, fitted (`_fit.py`) by gradient ascent on the
log-likelihood that the cause is in the marked set (``log Σ p`` over it) with an L2 penalty, in plain
Python (a few hundred examples, a few dozen features). It is blended with the cold-start ranking as
``log(cold share) + w · weights · features`` with ``w = n / (n + BLEND_K)`` for n confirmed incidents
learned from, so with no confirmations the ranking is exactly the cold-start one.

Which incidents may be examples is decided where they are collected (`agent/learning.py`): only those
that ended before the current one opened, confirmed before it was first diagnosed, never itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bus import Event
from rules.topology import Topology

from ._candidate import Candidate
from ._history import History
from ._populations import CallGraph
from ._scoring import rank_events
from ._signals import CHANGE, HEALTH, LOG, METRIC, TRACE, Signal

# How many confirmed incidents make the learned model count as much as the cold start: after 10 it has
# half the say, after 30 three quarters. Ten is where a feature seen in a third of incidents has been seen
# a few times, so one coincidence cannot turn the ranking; below it the cold start, which needs no
# history, dominates.
BLEND_K = 10.0

# Every candidate of a past incident is kept in its example, because the model is applied to every
# candidate of a new one. (Keeping only the cold start's best ten plus the cause wherever it ranked made
# whatever low-ranked candidates share, such as being an instance, look like a mark of the cause.)

# A candidate whose first own signal came within this many seconds of the incident's first counts as
# "among the first": about one metric scrape interval.
EARLY_S = 60.0

# The feature families used (see `describe` for what each means).
FAMILIES = frozenset({"type", "entity", "cold", "first", "time", "has", "metric", "log", "trace", "pos", "own"})

# The cold-start log-share as a learned feature (it is also the offset): its weight says how far to trust
# the cold ranking's confidence in this deployment (positive: more, negative: less); zero leaves the offset
# exactly as the cold start has it.
LOG_SHARE = "cold:log_share"

_SOURCE_WORDS = {METRIC: "a metric anomaly", LOG: "a log error", TRACE: "a trace anomaly",
                 HEALTH: "a failed health check", CHANGE: "a change (deploy or configuration)", "alert": "an alert",
                 "other": "another event"}


@dataclass(frozen=True)
class Features:
    """One candidate's named features (1.0 for a present flag; `cold:log_share` the log-share itself) and
    its cold-start log-share, the offset the learned weights correct."""

    entity: str
    values: Mapping[str, float]
    offset: float = 0.0


@dataclass(frozen=True)
class Example:
    """A past confirmed incident: its candidates' features and which of them the confirmed cause names."""

    incident_id: str
    cause: str
    candidates: tuple[Features, ...]
    positives: frozenset[str]


@dataclass(frozen=True)
class Support:
    """How often a feature marked the confirmed cause: in `caused` of the `seen` incidents where any
    candidate had it."""

    caused: int = 0
    seen: int = 0


@dataclass(frozen=True)
class LearnedModel:
    """Weights over named features, with the counts that make them readable, from `incidents` examples."""

    weights: Mapping[str, float] = field(default_factory=dict)
    incidents: int = 0
    support: Mapping[str, Support] = field(default_factory=dict)
    k: float = BLEND_K

    @property
    def blend(self) -> float:
        """The learned model's share of the say: n / (n + k)."""
        return self.incidents / (self.incidents + self.k) if self.incidents else 0.0

    def score(self, features: Features) -> float:
        """The learned correction to the candidate's cold-start log-share."""
        return sum(self.weights.get(name, 0.0) * value for name, value in features.values.items())

    def top(self, limit: int = 5) -> list[tuple[str, float]]:
        """The features that weigh most, either way, strongest first (ties by name)."""
        ranked = sorted(((n, w) for n, w in self.weights.items() if abs(w) >= 0.01), key=lambda p: (-abs(p[1]), p[0]))
        return ranked[:limit]

    def sentence(self, name: str) -> str:
        """"entities whose first signal was a log error were the confirmed cause in 9 of 11 past incidents"."""
        s = self.support.get(name, Support())
        if name == LOG_SHARE:
            w = self.weights.get(name, 0.0)
            trust = "more" if w > 0 else "less" if w < 0 else "as much as by default"
            return (f"the cold-start ranking's confidence (its log-share) counts {trust} here, learned from "
                    f"{s.seen} past incident{'s' * (s.seen != 1)}")
        if name.startswith("entity:"):
            return (f"{name.partition(':')[2]} was the confirmed cause in {s.caused} of the {s.seen} past incidents "
                    "where it was a candidate")
        return (f"{describe(name)} were the confirmed cause in {s.caused} of {s.seen} past incidents "
                f"where one was a candidate")

    def summary(self, limit: int = 3) -> str:
        """One paragraph for a decision record: from how many incidents, how much say, what counts most."""
        learned = "; ".join(f"{self.sentence(n)} (weight {w:+.2f})" for n, w in self.top(limit))
        return (f"learned from {self.incidents} confirmed incident{'s' * (self.incidents != 1)} "
                f"(weight {self.blend:.2f} against the cold start)" + (f": {learned}" if learned else ""))

    def why(self, features: Features, limit: int = 2) -> str:
        """What the learned model holds for or against one candidate, in words."""
        parts = sorted(((n, self.weights.get(n, 0.0) * v) for n, v in features.values.items()),
                       key=lambda p: (-abs(p[1]), p[0]))
        said = [f"{self.sentence(n)} ({'for' if c > 0 else 'against'} it)" for n, c in parts[:limit] if abs(c) >= 0.05]
        return (f"learned from {self.incidents} confirmed incidents: " + "; ".join(said)) if said else ""


def describe(name: str) -> str:
    """A feature's name in words, as the subject of a sentence ("entities whose …")."""
    kind, _, value = name.partition(":")
    if kind == "first":
        return f"entities whose first signal was {_SOURCE_WORDS.get(value, value)}"
    if kind == "has":
        return f"entities with {_SOURCE_WORDS.get(value, value)} of their own"
    if kind == "entity":
        return f"the entity {value}"
    if kind == "type":
        return f"entities of type {value}"
    if kind == "metric":
        return f"entities with a {value} anomaly"
    if kind == "log":  # a log template ("permission denied opening *") or a domain read from one
        return f'entities with error logs like "{value}"'
    if kind == "trace":
        return f"entities with trace {value} anomalies"
    if kind == "cold":
        return {"top1": "entities the cold start ranked first",
                "log_share": "entities by the cold start's share",
                "top3": "entities the cold start ranked second or third",
                "lower": "entities the cold start ranked below third"}.get(value, name)
    return {"pos:called_by_anomalous": "entities called by anomalous entities",
            "pos:calls_anomalous": "entities that call anomalous entities",
            "pos:no_anomalous_neighbour": "entities with no anomalous neighbour",
            "pos:anomalous_neighbours_1_2": "entities with one or two anomalous neighbours",
            "pos:anomalous_neighbours_3": "entities with three or more anomalous neighbours",
            "own:kinds_1": "entities with one kind of anomaly of their own",
            "own:kinds_2": "entities with two kinds of anomaly of their own",
            "own:kinds_3": "entities with three or more kinds of anomaly of their own",
            "time:early": "entities whose first signal was among the incident's first",
            "time:late": "entities whose first signal came after the incident's first minute"}.get(name, name)


# -- features --------------------------------------------------------------------------------------


def candidate_features(ranked: Sequence[Candidate], shares: Sequence[float], signals: Sequence[Signal],
                       topology: Topology) -> list[Features]:
    """Named features of each ranked candidate (same order), from the incident's signals and topology."""
    own: dict[str, list[Signal]] = {}
    for s in sorted(signals, key=lambda s: (s.ts, s.event_id)):
        own.setdefault(s.entity, []).append(s)
    anomalous = {e for e in own} | {topology.service_of(e) for e in own}
    start = min((s.ts for s in signals), default=0.0)
    calls = CallGraph(topology, [s for s in signals if s.source == TRACE], relations=("calls",))
    out = []
    for index, (c, share) in enumerate(zip(ranked, shares)):
        values = _features(c.entity, index, own.get(c.entity, []), anomalous, start, topology, calls)
        offset = math.log(max(share, 1e-300))
        values[LOG_SHARE] = offset
        out.append(Features(c.entity, values, offset))
    return out


def _features(entity: str, index: int, own: Sequence[Signal], anomalous: set[str], start: float,
              topology: Topology, calls: CallGraph) -> dict[str, float]:
    values: dict[str, float] = {f"type:{topology.entity_type(entity) or 'unknown'}": 1.0,
                                f"entity:{entity}": 1.0,
                                "cold:" + ("top1" if index == 0 else "top3" if index < 3 else "lower"): 1.0}
    if own:
        values[f"first:{own[0].source}"] = 1.0
        values["time:early" if own[0].ts - start <= EARLY_S else "time:late"] = 1.0
    # how many different kinds of anomaly it shows itself: a fault often shows several symptoms where it
    # is, where what it disturbs shows one; whether that holds in this deployment is what the weight learns
    kinds = len({(s.source, s.kind) for s in own})
    if kinds:
        values["own:kinds_1" if kinds == 1 else "own:kinds_2" if kinds == 2 else "own:kinds_3"] = 1.0
    for s in own:
        values[f"has:{s.source}"] = 1.0
        if s.source == METRIC:
            values[f"metric:{s.kind}"] = 1.0
        elif s.source in (LOG, TRACE):  # their kinds read "log:<domain>", "trace:latency"
            values[s.kind if s.kind.startswith(s.source + ":") else f"{s.source}:{s.kind}"] = 1.0
    service = topology.service_of(entity)
    others = anomalous - {entity, service}
    callers, callees = set(calls.callers(service)), set(calls.callees(service))
    if callers & others:
        values["pos:called_by_anomalous"] = 1.0
    if callees & others:
        values["pos:calls_anomalous"] = 1.0
    near = len(topology.neighbours(entity) & others)
    values["pos:no_anomalous_neighbour" if near == 0 else "pos:anomalous_neighbours_1_2" if near <= 2
           else "pos:anomalous_neighbours_3"] = 1.0
    return {n: v for n, v in values.items() if n.partition(":")[0] in FAMILIES}


def example_of(incident_id: str, events: Sequence[Event], topology: Topology, cause: str,
               history: History | None = None) -> Example | None:
    """A past incident as an example: its candidates ranked as it was diagnosed (with the `history` it had,
    so that what is learned corrects the ranking the model will be blended with) and described, the
    confirmed cause marked (a service: it and its instances, one set); all candidates are kept, as the model
    is applied to all; None when the cause was no candidate (nothing to learn from)."""
    ranking = rank_events(events, topology, history)
    topology, signals, ranked = ranking.topology, ranking.signals, ranking.ranked
    if not ranked:
        return None
    shares = posterior([c.rank for c in ranked])
    features = candidate_features(ranked, shares, signals, topology)
    positives = frozenset(f.entity for f in features if f.entity == cause or topology.service_of(f.entity) == cause)
    if not positives:
        return None
    return Example(incident_id, cause, tuple(features), positives)


def posterior(scores: Sequence[float]) -> list[float]:
    """Softmax: each score's share of exp(score), computed stably."""
    if not scores:
        return []
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


# -- blending ----------------------------------------------------------------------------------------


def blend(model: LearnedModel, features: Sequence[Features]) -> list[float]:
    """Each candidate's blended score: its cold-start log-share plus w times the learned correction."""
    return [f.offset + model.blend * model.score(f) for f in features]
