"""The combining rule: the final ranking mixes the LLM's hypotheses with the deterministic evidence.

    admissible(e)  e is a deterministic candidate, i.e. has evidence in this incident
    close(e)       e is a close call: among the first CLOSE_RANKS candidates, with at least CLOSE_SHARE of
                   the leader's share (the evidence has not decided between them)
    p_det(e)       the deterministic reasoner's confidence (its posterior share; sums to 1 over candidates)
    p_llm(e)       the LLM's confidence in e, renormalised over its close-call hypotheses (0 if not named)
    score(e)       LLM_WEIGHT * p_llm(e) + (1 - LLM_WEIGHT) * p_det(e)   (p_det(e) when the LLM named no close call)

Entities are ranked by score (ties: deterministic rank); a cause's confidence is its score, so the
confidences still sum to at most 1. Hypotheses about entities that are not admissible are dropped before
anything else: the LLM can reorder the candidates the evidence supports, never add one. And it reorders
only the close calls: a candidate outside them gets no LLM weight, so its score stays below the leader's
and every close call's, and it stays where the evidence ranks it, however confidently a model names it.
A wrong or hostile model can therefore cost at most the close calls the evidence could not settle, while
a right one settles them (benchmarks/rca_accuracy.py --llm scripted measures both). Among the close calls,
with LLM_WEIGHT = 0.5, a candidate the LLM names alone goes first; when the LLM spreads its confidence over
several, the deterministic shares settle it.

A cause keeps the deterministic evidence (event ids) of its entity, followed by the event ids the LLM
cited that are in the incident. Its fault type is the LLM's when the LLM named the entity with a fault
type other than `unknown` that the entity's evidence supports (`supported`, from
`DeterministicReasoner.fault_kinds`: the kinds its signals speak of, its change's fault, its deterministic
label), else the deterministic one, with a note: a model may reorder candidates, but it cannot relabel a
database's connection exhaustion as `cpu` when no CPU signal says so. Its explanation leads with the LLM's
reasoning and keeps the deterministic explanation after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from agent.models import RootCause
from rules import Proposal

LLM_WEIGHT = 0.5
# A close call: a candidate among the first CLOSE_RANKS whose share is at least CLOSE_SHARE of the leader's
# (posterior odds of at most 1.25 to 1). docs/llm.md shows what other values do on every personality.
CLOSE_RANKS = 3
CLOSE_SHARE = 0.8
MAX_EVIDENCE = 20
MAX_PROPOSALS = 4


def combine(candidates: Sequence[RootCause], hypotheses: Sequence[dict[str, Any]], limit: int, *,
            supported: Mapping[str, Set[str]] | None = None) -> tuple[list[RootCause], list[str]]:
    """The merged ranking (at most `limit` causes) and notes on what the rule did. With `supported`
    (entity → the fault types its evidence speaks of), an LLM fault type outside that set is dropped;
    None checks nothing (callers that have no evidence kinds to hand)."""
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
    det_total = sum(c.confidence for c in candidates) or 1.0
    close = close_calls(candidates)
    weighed = {e: h for e, h in named.items() if e in close}
    for entity in named:
        if entity not in close:
            notes.append(f"combining: {entity} stays where the evidence ranks it: not a close call with "
                         f"{candidates[0].entity}")
    total = sum(max(0.0, float(h["confidence"])) for h in weighed.values())
    p_llm = {e: (max(0.0, float(h["confidence"])) / total if total > 0 else 1 / len(weighed))
             for e, h in weighed.items()}
    scored = []
    for rank, cand in enumerate(candidates):
        p_det = cand.confidence / det_total
        score = (LLM_WEIGHT * p_llm.get(cand.entity, 0.0) + (1 - LLM_WEIGHT) * p_det) if p_llm else p_det
        scored.append((score, rank, cand))
    scored.sort(key=lambda item: (-item[0], item[1]))
    if supported is not None:
        by_entity = {c.entity: c for c in candidates}
        named = {e: _agreeing(h, by_entity[e], supported.get(e, frozenset()), notes) for e, h in named.items()}
    causes = [_merge(cand, named.get(cand.entity), score) for score, _, cand in scored[:max(0, limit)]]
    if causes and candidates and causes[0].entity != candidates[0].entity:
        notes.append(f"combining: the LLM moved {causes[0].entity} ahead of {candidates[0].entity}")
    return causes, notes


def close_calls(candidates: Sequence[RootCause]) -> set[str]:
    """The leading candidates whose evidence is nearly as strong as the leader's: at most CLOSE_RANKS of
    them, each with at least CLOSE_SHARE of the leader's share. Only among these can a model's view change
    the order: the evidence has not decided between them, and a model cannot lift one it clearly ranks
    lower."""
    if not candidates:
        return set()
    lead = candidates[0].confidence
    return {c.entity for c in candidates[:CLOSE_RANKS] if c.confidence >= CLOSE_SHARE * lead}


def _agreeing(hyp: dict[str, Any], cand: RootCause, kinds: Set[str], notes: list[str]) -> dict[str, Any]:
    """`hyp` with its fault type kept only when the evidence supports it; else `unknown`, which `_merge`
    reads as "the deterministic label stands", and a note saying what the evidence speaks of."""
    fault = hyp["fault_type"]
    if fault == "unknown" or fault == cand.fault_type or fault in kinds:
        return hyp
    spoken = ", ".join(sorted(k for k in set(kinds) | {cand.fault_type} if k != "unknown")) or "no fault type"
    notes.append(f"combining: fault type '{fault}' for {cand.entity} dropped: the evidence speaks of {spoken}")
    return {**hyp, "fault_type": "unknown"}


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


def proposals_from(answer: dict[str, Any], causes: Sequence[RootCause], proposed_by: str, *,
                   notify: bool) -> list[Proposal]:
    """The LLM's validated actions as Proposals for the top cause (at most MAX_PROPOSALS, duplicates
    dropped), and, when `notify` (the notify_oncall contract exists) and the LLM paged nobody, a page
    with its summary: a person should know what the model found and what is being done."""
    cause = causes[0]
    proposals: list[Proposal] = []
    for action in answer["actions"][:MAX_PROPOSALS]:
        if any((p.type, p.target) == (action["type"], action["target"]) for p in proposals):
            continue
        proposals.append(Proposal(type=action["type"], target=action["target"], params=dict(action["params"]),
                                  reason=action["reason"][:400], cause=cause.entity, proposed_by=proposed_by))
    if notify and not any(p.type == "notify_oncall" for p in proposals):
        summary = answer.get("summary", "").strip() or "no summary"
        planned = ", ".join(f"{p.type} {p.target}" for p in proposals) or "no automatic action"
        text = (f"Probable root cause: {cause.entity} ({cause.fault_type}, share {cause.share}). "
                f"Proposed: {planned}. {summary}")
        proposals.append(Proposal(type="notify_oncall", target=cause.entity, params={"summary": text[:2000]},
                                  cause=cause.entity, proposed_by=proposed_by,
                                  reason="a person should know what was found and what is being done about it"))
    return proposals
