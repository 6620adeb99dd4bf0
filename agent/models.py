"""The agent's domain objects: ranked root causes, how a reasoner decided, what it sees, decision records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from bus import Event
from rules import Topology


class RootCause(BaseModel):
    """One ranked hypothesis: which entity is at fault, how sure we are, and on what evidence."""

    entity: str
    fault_type: str = "unknown"
    confidence: float = Field(ge=0.0, le=1.0)
    evidence: list[str] = Field(default_factory=list, description="event ids, strongest first")
    explanation: str = ""

    @property
    def share(self) -> str:
        """The confidence as people read it: "confidence 1.00" for a clear winner says nothing (see
        `share_text`)."""
        return share_text(self.confidence)


def share_text(share: float) -> str:
    """A cause's share of all candidates as a percentage with as many digits as it needs, so no cause reads
    as a bare 0 or 1: the reasoners round shares to 4 decimals, so 0 means below 0.005% and 1 above 99.995%."""
    if share <= 0:
        return "< 0.005%"
    if share >= 1:
        return "> 99.99%"
    percent = share * 100
    if percent >= 99.5:  # 99.97% is not 100%
        return f"{percent:.2f}%"
    if percent >= 10:
        return f"{percent:.0f}%"
    if percent >= 1:
        return f"{percent:.1f}%"
    return f"{percent:.2g}%"


class ReasonerRun(BaseModel):
    """How a reasoner reached its answer: recorded with the decision, so a reader knows what to trust."""

    reasoner: str = Field(description="who decided: `deterministic`, or `llm` with the model in versions")
    versions: dict[str, str] = Field(default_factory=dict, description="model, prompt hash, reasoner version")
    fallback: str | None = Field(default=None, description="why the deterministic answer replaced the LLM's")
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    llm_seconds: float = Field(default=0.0, ge=0, description="wall seconds of the incident's LLM deadline used "
                               "by the end of this step (diagnose, then propose: the rest is propose's)")
    notes: list[str] = Field(default_factory=list)


class DecisionRecord(BaseModel):
    """One append-only entry of the audit log, hash-chained to the one before it."""

    seq: int
    at: datetime
    incident_id: str | None = None
    kind: str
    node: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    decision: dict[str, Any] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class IncidentView:
    """What a reasoner sees of one incident, the same in `diagnose` and `propose`: its events, the
    topology, the background learned from earlier incidents only (`agent.reasoner.History`), and what
    marked the causes confirmed in earlier incidents (`agent.reasoner.LearnedModel`; None: nothing learned)."""

    incident_id: str
    events: Sequence[Event]
    topology: Topology
    history: Any = None
    learned: Any = None
