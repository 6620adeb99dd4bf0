"""What marks a true root cause in this deployment, learned from the causes people confirmed. Pure.

Each candidate of an incident is described by named features a person can read: the kinds of its own signals
(metric anomaly, log error, trace anomaly, health, change), which came first, its metric kinds and log and
trace domains, how many kinds of anomaly it shows, its entity type, its place in the topology among the other
anomalous entities, its timing, where the cold-start ranking put it and how sure it was (`cold:log_share`). A
past incident whose cause was confirmed is one example: all its candidates (the same ones the model is later
applied to), the confirmed one marked as the cause, or, for a confirmed service, it and its instances marked
as one set.

The model is a conditional logit ("which of these candidates is the cause?"): a softmax over the
candidates of an incident of ``log(cold share) + weights · features``, fitted by gradient ascent on the
log-likelihood that the cause is in the marked set (``log Σ p`` over it) with an L2 penalty, in plain
Python (a few hundred examples, a few dozen features). It is blended with the cold-start ranking as
``log(cold share) + w · weights · features`` with ``w = n / (n + BLEND_K)`` for n confirmed incidents
learned from, so with no confirmations the ranking is exactly the cold-start one.

Which incidents may be examples is decided where they are collected (`agent/learning.py`): only those
that ended before the current one opened, confirmed before it was first diagnosed, never itself.
"""

from __future__ import annotations

import math
from collections import Counter
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

# The L2 penalty on the summed log-likelihood (a Gaussian prior of variance 1 on each weight): it keeps a
# feature seen in one incident from deciding alone. The fit is 100 full-batch passes from zero. Measured
# on the shared cases with the line search (2026-12-05): with 39 examples every weight is within 0.02 of
# where 1,000 passes take it; with 77, the rarest features' (one entity, one metric) within 0.24. With the
# fixed step before it (2026-12-04), 1,000 passes moved two of the prequential benchmark's 78 ranks and
# lost one top-3 case (64.1 / 82.1 against 64.1 / 83.3), and the whole benchmark took twice as long.
L2 = 1.0
ITERATIONS = 100
# The line search: each pass starts from GROW times the last accepted step (at most MAX_STEP) and halves it until
# the objective rises by at least ARMIJO × step × |gradient|² (Armijo's condition), so no pass overshoots.
STEP = 1.0
MAX_STEP = 16.0
GROW = 1.25
MIN_STEP = 1e-8
ARMIJO = 1e-4

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


# -- fitting and blending --------------------------------------------------------------------------


def fit(examples: Sequence[Example], *, k: float = BLEND_K, l2: float = L2,
        iterations: int = ITERATIONS) -> LearnedModel:
    """The conditional logit over the examples' candidates, by full-batch gradient ascent from zero with a
    backtracking line search (so the same examples always give the same weights, and each pass raises the
    objective: a fixed step overshot and swung back and forth where few examples share many features). An
    example's positives are one set label: the objective is log Σ p over them (the chance the cause is any
    of them), so the model is not pushed to split the probability among a service's instances; its gradient
    gives each positive its own share of the set's probability as the target."""
    examples = [e for e in examples if e.candidates and e.positives]
    if not examples:
        return LearnedModel(k=k)
    names = sorted({n for e in examples for f in e.candidates for n in f.values})
    index = {n: i for i, n in enumerate(names)}
    rows = [[(tuple((index[n], v) for n, v in f.values.items()), f.entity in e.positives, f.offset)
             for f in e.candidates] for e in examples]
    weights = [0.0] * len(names)
    scores = _scores(weights, rows)
    value, grad = _objective(weights, scores, rows, l2), _gradient(weights, scores, rows, l2)
    step = STEP
    for _ in range(iterations):
        slope = sum(g * g for g in grad)
        if slope < 1e-12:  # at the optimum
            break
        while True:
            trial = [w + step * g for w, g in zip(weights, grad)]
            scores = _scores(trial, rows)
            trial_value = _objective(trial, scores, rows, l2)
            if trial_value >= value + ARMIJO * step * slope or step < MIN_STEP:
                break
            step /= 2
        weights, value, grad = trial, trial_value, _gradient(trial, scores, rows, l2)
        step = min(step * GROW, MAX_STEP)  # a little longer next pass, in case the curvature eased
    return LearnedModel({n: round(w, 6) for n, w in zip(names, weights)}, len(examples), _support(examples), k)


def _scores(weights: Sequence[float], rows) -> list[list[float]]:
    """Each example's candidates' scores: the cold-start offset plus weights · features."""
    return [[offset + sum(weights[i] * v for i, v in feats) for feats, _, offset in row] for row in rows]


def _objective(weights: Sequence[float], scores, rows, l2: float) -> float:
    """The mean over examples of log Σ p (the marked set's probability) minus the L2 penalty; computed with
    log-sum-exp, so a set whose probability underflows still counts."""
    value = -0.5 * l2 * sum(w * w for w in weights)
    for row, scored in zip(rows, scores):
        value += _log_sum_exp([s for s, (_, positive, _) in zip(scored, row) if positive]) - _log_sum_exp(scored)
    return value / len(rows)


def _gradient(weights: Sequence[float], scores, rows, l2: float) -> list[float]:
    """The objective's gradient: per feature, what the marked set's candidates have of it, each weighed by
    its share of the set, minus what all have, each weighed by its probability; minus the penalty's."""
    grad = [-l2 * w for w in weights]
    for row, scored in zip(rows, scores):
        every = _log_sum_exp(scored)
        marked = _log_sum_exp([s for s, (_, positive, _) in zip(scored, row) if positive])
        for s, (feats, positive, _) in zip(scored, row):
            gap = (math.exp(s - marked) if positive else 0.0) - math.exp(s - every)
            for i, v in feats:
                grad[i] += gap * v
    return [g / len(rows) for g in grad]


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _support(examples: Sequence[Example]) -> dict[str, Support]:
    caused: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for e in examples:
        present = {n for f in e.candidates for n, v in f.values.items() if v}
        marked = {n for f in e.candidates if f.entity in e.positives for n, v in f.values.items() if v}
        seen.update(present)
        caused.update(marked)
    return {n: Support(caused[n], seen[n]) for n in seen}


def blend(model: LearnedModel, features: Sequence[Features]) -> list[float]:
    """Each candidate's blended score: its cold-start log-share plus w times the learned correction."""
    return [f.offset + model.blend * model.score(f) for f in features]
