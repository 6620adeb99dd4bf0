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


class ReasonerRun(BaseModel):
    """How a reasoner reached its answer: recorded with the decision, so a reader knows what to trust."""

    reasoner: str = Field(description="who decided: `deterministic`, or `llm` with the model in versions")
    versions: dict[str, str] = Field(default_factory=dict, description="model, prompt hash, reasoner version")
    fallback: str | None = Field(default=None, description="why the deterministic answer replaced the LLM's")
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
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
