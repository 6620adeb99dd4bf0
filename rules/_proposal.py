"""What the reasoner proposes and what the guard says about it.

These live in `rules/` because the guard judges them; the agent imports them from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Outcome = Literal["allow", "deny", "require_approval"]
OUTCOME_PRECEDENCE: dict[str, int] = {"deny": 3, "require_approval": 2, "allow": 1}


class Proposal(BaseModel):
    """One remediation action a reasoner wants to take. It runs only if the guard allows it."""

    type: str = Field(description="action type; must name an action contract")
    target: str = Field(description="topology entity id the action acts on")
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    cause: str | None = Field(default=None, description="root-cause entity this action answers")
    proposed_by: str = "deterministic"


class RuleMatch(BaseModel):
    """A guardrail (or built-in check) that matched, and what it says."""

    id: str
    outcome: Outcome
    reason: str
    approver_role: str | None = None


class Verdict(BaseModel):
    """The guard's judgement of one proposal: the outcome, every rule that matched, and why."""

    outcome: Outcome
    rules: list[str] = Field(default_factory=list, description="ids of all rules that matched, in file order")
    reasons: list[str] = Field(default_factory=list)
    matches: list[RuleMatch] = Field(default_factory=list)
    approver_role: str | None = None
    ruleset: str = Field(default="", description="content hash of the rule set that judged")
    contract: str | None = Field(default=None, description="content hash of the action contract used")

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
