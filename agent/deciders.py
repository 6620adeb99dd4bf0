"""Which reasoner ranked each incident's root causes, and what that ranking could not see, read back
from the audit log.

The graph's diagnose node records the reasoner run with every `causes.ranked` record: the LLM, the
deterministic reasoner, or the deterministic reasoner standing in for the LLM (with the reason; a
reason starting "degraded mode" means the LLM provider's breaker was open).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .audit import AuditLog


@dataclass(frozen=True)
class Decider:
    reasoner: str  # "llm", "deterministic", or "?" when the record names none
    fallback: str | None  # why the deterministic reasoner answered instead of the LLM
    degraded: bool  # the fallback was degraded mode: the LLM provider's breaker was open
    model: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unlisted_of(audit: AuditLog, incident_id: str) -> list[str]:
    """The incident's entities that the topology did not hold when it was last ranked, so that ranking
    never weighed them (`agent.reasoner.unlisted`), as its `causes.ranked` record keeps them."""
    ranked = audit.records(incident_id=incident_id, kind="causes.ranked")
    return list(ranked[-1].inputs.get("unlisted", [])) if ranked else []


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
