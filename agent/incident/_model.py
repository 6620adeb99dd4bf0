"""The incident and its plan as types every surface shares: graph, service, CLI, API, chat, report, console.

Statuses are enums whose values are the strings stored and shown, so JSON stays readable and an old
store row decodes as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models import RootCause

PAGE = "notify_oncall"  # the action type that pages a person: it runs first and never waits


class IncidentStatus(StrEnum):
    OPEN = "open"  # gathering evidence before diagnosis
    DIAGNOSING = "diagnosing"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"  # the kill switch holds its next action
    VERIFYING = "verifying"  # acted; waiting, in event time, for quiet
    RESOLVED = "resolved"
    ESCALATED = "escalated"  # a person must act; they were paged with the reason
    DIAGNOSED = "diagnosed"  # dry run: causes and verdicts, nothing executed
    MERGED = "merged"  # absorbed by another incident
    FAILED = "failed"  # rtem itself failed on it repeatedly; a person was paged

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({IncidentStatus.RESOLVED, IncidentStatus.ESCALATED, IncidentStatus.DIAGNOSED,
                   IncidentStatus.MERGED, IncidentStatus.FAILED})


class ActionStatus(StrEnum):
    PROPOSED = "proposed"  # allowed and not run yet (or, in a dry run, what would happen)
    DENIED = "denied"  # the guard said no
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"  # a person said yes; runs once its turn comes
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody decided in time, or the approval grew too old to act on
    BLOCKED = "blocked"  # approved, but the guard denies it on the current state
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # never ran; `status_reason` always says why
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


Outcome = Literal["allow", "deny", "require_approval"]


class StepOutcome(BaseModel):
    """What one executed step returned (also for a step that was refused before it ran)."""

    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    breaker_open: bool = False
    key: str | None = None
    rules: list[str] = Field(default_factory=list)


class Approval(BaseModel):
    """A person's decision on one action, as the ledger keeps it."""

    decision: Literal["approve", "reject"]
    by: str
    reason: str = ""
    at: datetime


class PlannedAction(BaseModel):
    """One proposal after the guard: what to do, the verdict, and where it stands."""

    model_config = ConfigDict(use_enum_values=False)

    index: int
    type: str
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    verdict: Outcome
    rules: list[str] = Field(default_factory=list)
    reason: str = ""
    approver_role: str | None = None
    proposed_by: str = "deterministic"
    status: ActionStatus
    status_reason: str = Field(default="", description="why the status is what it is (skipped, expired, blocked…)")
    depends_on: list[int] = Field(default_factory=list, description="earlier actions that must be done first")
    requested_at: datetime | None = Field(default=None, description="when approval was asked for")
    approval: Approval | None = None
    outcome: StepOutcome | None = None
    compensation: dict[str, Any] | None = None

    @property
    def executed(self) -> bool:
        return self.status in (ActionStatus.DONE, ActionStatus.COMPENSATED, ActionStatus.COMPENSATION_FAILED)

    @property
    def label(self) -> str:
        return f"#{self.index} {self.type} on {self.target}"

    def to_record(self) -> dict[str, Any]:
        """The stored and served form: the model's fields plus `executed`, which readers expect."""
        return {**self.model_dump(mode="json"), "executed": self.executed}


class Incident(BaseModel):
    """An incident as the store holds it, typed."""

    id: str
    opened_at: str
    updated_at: str
    first_ts: float
    last_ts: float
    status: IncidentStatus
    severity: str
    entities: list[str] = Field(default_factory=list)
    detections: list[str] = Field(default_factory=list)
    signal_count: int = 0
    event_count: int = 0
    merged_into: str | None = None
    root_causes: list[RootCause] = Field(default_factory=list)
    actions: list[PlannedAction] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    diagnosed_at: str | None = None
    mttr_s: float | None = None
    resolution: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Incident:
        return cls.model_validate({k: v for k, v in row.items() if v is not None or k in ("merged_into",)})

    def action(self, index: int) -> PlannedAction | None:
        return next((a for a in self.actions if a.index == index), None)


@dataclass(frozen=True)
class Policy:
    """How long approvals live and how recovery is judged (event time, except approvals: people)."""

    approval_ttl_s: float = 15 * 60
    verify_quiet_s: float = 60.0
    verify_deadline_s: float = 600.0


@dataclass(frozen=True)
class Recovery:
    """What verification concluded: resolved, escalated (with the reason), or still verifying."""

    status: IncidentStatus
    resolution: str | None = None
    recovered_at: float | None = None
    mttr_s: float | None = None


@dataclass(frozen=True)
class AlertState:
    """One alert (by fingerprint) in an incident, from its `rtem.alert` events: when it last fired (an
    event that raised a signal) and when it last resolved, in event time."""

    fingerprint: str
    name: str = ""
    fired_ts: float | None = None
    resolved_ts: float | None = None
    resolved_by: str | None = None  # the id of the event that said it resolved

    @property
    def resolved(self) -> bool:
        """Resolved since it last fired (an alert that fires again after resolving is firing)."""
        return self.resolved_ts is not None and (self.fired_ts is None or self.resolved_ts >= self.fired_ts)


@dataclass(frozen=True)
class AlertRecovery:
    """What an incident's alerts say: all of them resolved, the last at `at`, and no signal came after."""

    at: float
    alerts: tuple[str, ...]  # their names (or fingerprints)
    evidence: tuple[str, ...]  # the ids of the events that said they resolved
