"""Which reasoner ranked each incident's root causes, and what that ranking could not see, read back
from the audit log.

The graph's diagnose node records the reasoner run with every `causes.ranked` record: the LLM, the
deterministic reasoner, or the deterministic reasoner standing in for the LLM (with the reason; a
reason starting "degraded mode" means the LLM provider's breaker was open).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .audit import AuditLog
from .models import DecisionRecord


@dataclass(frozen=True)
class Decider:
    reasoner: str  # "llm", "deterministic", or "?" when the record names none
    fallback: str | None  # why the deterministic reasoner answered instead of the LLM
    degraded: bool  # the fallback was degraded mode: the LLM provider's breaker was open
    model: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unlisted_in(records: Iterable[DecisionRecord]) -> list[str]:
    """An incident's entities that the topology did not hold when it was last ranked, so that ranking
    never weighed them (`agent.reasoner.unlisted`), as its latest `causes.ranked` record among `records`
    keeps them."""
    return list(_ranking_inputs(records).get("unlisted", []))


def described_in(records: Iterable[DecisionRecord]) -> dict[str, str]:
    """An incident's entities that the topology did not hold but whose events said their service, so its
    latest ranking among `records` weighed them as instances of it (`rules.topology.described_by`):
    entity → service."""
    return dict(_ranking_inputs(records).get("described", {}))


def topology_gaps(audit: AuditLog, incident_id: str) -> tuple[list[str], dict[str, str]]:
    """`unlisted_in` and `described_in` for one incident of the audit log, read once."""
    ranked = audit.records(incident_id=incident_id, kind="causes.ranked")
    return unlisted_in(ranked), described_in(ranked)


def _ranking_inputs(records: Iterable[DecisionRecord]) -> dict[str, Any]:
    """The inputs of the latest `causes.ranked` record among `records` ({} when there is none)."""
    ranked = [r for r in records if r.kind == "causes.ranked"]
    return ranked[-1].inputs if ranked else {}


def deciders(audit: AuditLog) -> dict[str, Decider]:
    """The reasoner of each incident's latest ranking, by incident id."""
    found: dict[str, Decider] = {}
    for record in audit.records(kind="causes.ranked"):
        run = record.decision.get("reasoner") or {}
        fallback = run.get("fallback")
        found[record.incident_id] = Decider(reasoner=run.get("reasoner", "?"), fallback=fallback,
                                            degraded=bool(fallback and fallback.startswith("degraded mode")),
                                            model=record.versions.get("model", "none"))
    return found
