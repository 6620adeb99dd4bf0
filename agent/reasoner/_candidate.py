"""A root-cause candidate: one entity's case, with what the explanation needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._catalog import RESOURCE_DOMAINS, SPECIFICITY, SYMPTOM_DOMAINS, fault_type_of
from ._signals import CHANGE, Signal


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
    rank: float = 0.0
    kinds: list[tuple[str, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fault_type(cand: Candidate) -> str:
    for _, s in cand.evidence:
        if s.source == CHANGE:
            return s.domain
    resources = {d: v for d, v in cand.domains.items() if d in RESOURCE_DOMAINS}
    pool = resources or cand.domains
    if not pool:
        return "unknown"
    rank = {d: -i for i, d in enumerate(SPECIFICITY)}
    return fault_type_of(max(pool, key=lambda d: (round(pool[d], 6), rank.get(d, -len(SPECIFICITY)))))


def symptom(cand: Candidate) -> float:
    return sum(v for d, v in cand.domains.items() if d in SYMPTOM_DOMAINS)
