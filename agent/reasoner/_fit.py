"""Fitting the learned model (`_learned.LearnedModel`) to confirmed incidents: a conditional logit by
full-batch gradient ascent with a backtracking line search, in plain Python. Pure and deterministic: the
same examples always give the same weights (docs/learning.md, "The model, and how it is blended")."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from ._learned import BLEND_K, Example, LearnedModel, Support

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
