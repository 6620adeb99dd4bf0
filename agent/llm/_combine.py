"""The combining rule: the final ranking mixes the LLM's hypotheses with the deterministic evidence.

    admissible(e)  e is a deterministic candidate, i.e. has evidence in this incident
    p_det(e)       the deterministic reasoner's confidence (its posterior share; sums to 1 over candidates)
    p_llm(e)       the LLM's confidence in e, renormalised over its admissible hypotheses (0 if not named)
    score(e)       LLM_WEIGHT * p_llm(e) + (1 - LLM_WEIGHT) * p_det(e)

Entities are ranked by score (ties: deterministic rank); a cause's confidence is its score, so the
confidences still sum to at most 1. An answer that names no admissible entity leaves the deterministic
ranking as it is. Hypotheses about entities that are not admissible are dropped before
anything else: the LLM can reorder the candidates the evidence supports, never add one. With
LLM_WEIGHT = 0.5, a candidate the LLM names alone goes first; when the LLM spreads its confidence over
several, the deterministic shares settle the close calls between them.

A cause keeps the deterministic evidence (event ids) of its entity, followed by the event ids the LLM
cited that are in the incident. Its fault type is the LLM's when the LLM named the entity with a fault
type other than `unknown`, else the deterministic one; its explanation leads with the LLM's reasoning and
keeps the deterministic explanation after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.models import RootCause

LLM_WEIGHT = 0.5
MAX_EVIDENCE = 20


def combine(candidates: Sequence[RootCause], hypotheses: Sequence[dict[str, Any]],
            limit: int) -> tuple[list[RootCause], list[str]]:
    """The merged ranking (at most `limit` causes) and notes on what the rule did."""
    admissible = {c.entity for c in candidates}
    notes: list[str] = []
    named: dict[str, dict[str, Any]] = {}
    for hyp in hypotheses:
        entity = hyp["entity"]
        if entity not in admissible:
            notes.append(f"combining: {entity} dropped, it has no evidence in the incident")
        elif entity not in named:
            named[entity] = hyp
    if not named:
        notes.append("combining: the LLM named no candidate with evidence; the deterministic ranking stands")
        return list(candidates[:max(0, limit)]), notes
    total = sum(max(0.0, float(h["confidence"])) for h in named.values())
    p_llm = {e: (max(0.0, float(h["confidence"])) / total if total > 0 else 1 / len(named)) for e, h in named.items()}
    det_total = sum(c.confidence for c in candidates) or 1.0
    scored = []
    for rank, cand in enumerate(candidates):
        p_det = cand.confidence / det_total
        score = LLM_WEIGHT * p_llm.get(cand.entity, 0.0) + (1 - LLM_WEIGHT) * p_det
        scored.append((score, rank, cand))
    scored.sort(key=lambda item: (-item[0], item[1]))
    causes = [_merge(cand, named.get(cand.entity), score) for score, _, cand in scored[:max(0, limit)]]
    if causes and candidates and causes[0].entity != candidates[0].entity:
        notes.append(f"combining: the LLM moved {causes[0].entity} ahead of {candidates[0].entity}")
    return causes, notes


def _merge(cand: RootCause, hyp: dict[str, Any] | None, score: float) -> RootCause:
    if hyp is None:
        return cand.model_copy(update={"confidence": round(min(1.0, max(0.0, score)), 4)})
    evidence = list(cand.evidence)
    for event_id in hyp.get("evidence", ()):
        if event_id not in evidence:
            evidence.append(event_id)
    fault = hyp["fault_type"] if hyp["fault_type"] != "unknown" else cand.fault_type
    why = hyp.get("explanation", "").strip()
    explanation = f"LLM: {why} Evidence: {cand.explanation}" if why else cand.explanation
    return RootCause(entity=cand.entity, fault_type=fault, confidence=round(min(1.0, max(0.0, score)), 4),
                     evidence=evidence[:MAX_EVIDENCE], explanation=explanation)
