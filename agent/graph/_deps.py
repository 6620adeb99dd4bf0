"""What the graph's nodes share: the run's dependencies (`Deps`, built once), the thread's state,
and the incident as a reasoner sees it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypedDict

from rules import Proposal, Topology

from ..audit import AuditLog
from ..executors import Executors
from ..incident import PlannedAction, Policy
from ..investigate import Investigator
from ..learning import LearningCache, learned_model
from ..ledger import Ledger
from ..models import IncidentView, ReasonerRun, RootCause
from ..ruleset import RuleSource
from ..store import IncidentStore
from ..topology_reload import TopologySource


class Reasoner(Protocol):
    """Ranks causes and proposes actions from one view of the incident (events, topology, history),
    always saying how it decided (`ReasonerRun`: model, prompt hash, fallbacks)."""

    name: str
    version: str

    def diagnose(self, view: IncidentView, limit: int = 5) -> tuple[list[RootCause], ReasonerRun]: ...
    def propose(self, view: IncidentView, causes: Sequence[RootCause],
                diagnosis: ReasonerRun | None = None) -> tuple[list[Proposal], ReasonerRun]: ...


@dataclass(frozen=True)
class Deps:
    """Everything a node needs from outside, built once (agent/service.py) and never rewired: the rule
    set and the topology in force are read from `rules.current()` and `topologies.current()` at each
    use, so a hot reload needs no rewiring."""

    store: IncidentStore
    audit: AuditLog
    reasoner: Reasoner
    rules: RuleSource
    topologies: TopologySource
    base_versions: Mapping[str, str] = field(default_factory=dict)  # topology, model, prompt
    ledger: Ledger | None = None
    executors: Executors | None = None
    policy: Policy = field(default_factory=Policy)
    dry_run: bool = True
    watermark: Callable[[], float] = lambda: 0.0
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    worker: str | None = None  # the `rtem run` worker that drives the incidents: named in execution records
    investigator: Investigator | None = None  # Prometheus queries gather_context runs (RTEM_PROMETHEUS_URL)
    learning: LearningCache = field(default_factory=LearningCache)  # examples and fits, reused across views

    @property
    def topology(self) -> Topology:
        """The topology in force now (a reload swaps it between two reads, never during one)."""
        return self.topologies.current()

    def versions(self, run: ReasonerRun | None = None) -> dict[str, str]:
        """The versions a decision record names: the rules in force now, the topology, the reasoner."""
        versions = {**self.base_versions, **self.rules.current().versions, "topology": self.topology.digest,
                    "reasoner": f"{self.reasoner.name}/{self.reasoner.version}"}
        if run is not None:
            versions.update(run.versions)
        return versions

    def view(self, incident_id: str) -> IncidentView:
        """The incident as a reasoner sees it, the same in diagnose and propose: its events, the
        topology, the background learned from the incidents that opened before its first event, never
        later, and what the causes confirmed before it was first diagnosed teach (`agent/learning.py`)."""
        events, topology = self.store.events(incident_id), self.topology
        history = learned = None
        if events:
            first = min(e.ts for e in events)
            history = self.learning.history(self.store, topology, first, incident_id)
            model = learned_model(self.store, self.audit, topology, incident_id, first, self.learning)
            learned = model if model.incidents else None
        return IncidentView(incident_id, events, topology, history, learned)


class IncidentState(TypedDict, total=False):
    incident_id: str
    incident: dict[str, Any]
    root_causes: list[dict[str, Any]]
    diagnosis: dict[str, Any]
    proposals: list[dict[str, Any]]
    fitness: dict[str, Any] | None  # the Diagnosis the proposals were held to (remedy fitness), for the guard
    actions: list[dict[str, Any]]
    acted_at: float
    saga: dict[str, Any]
    recovered_at: float
    mttr_s: float
    resolution: str
    dry_run: bool
    status: str


def plan_of(state: IncidentState) -> list[PlannedAction]:
    return [PlannedAction.model_validate(a) for a in state.get("actions", [])]


def records(actions: Sequence[PlannedAction]) -> list[dict[str, Any]]:
    return [a.to_record() for a in actions]


