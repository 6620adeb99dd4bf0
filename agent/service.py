"""Wiring: build rtem's components from settings, the same way for `analyze`, `run` and `demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bus import Bus
from rules import Correlator, Detector, Topology, load_detections
from rules import Guard, load_contracts, load_guardrails

from .audit import AuditLog
from .config import Settings
from .graph import Deps, IncidentGraph, Policy
from .ledger import Ledger
from .reasoner import DeterministicReasoner
from .store import IncidentStore
from .triage import BatchResult, Triage


@dataclass
class Components:
    settings: Settings
    topology: Topology
    store: IncidentStore
    audit: AuditLog
    triage: Triage
    graph: IncidentGraph
    versions: dict[str, str]
    ledger: Ledger | None = None

    async def open(self) -> Components:
        await self.graph.open()
        return self

    async def close(self) -> None:
        await self.graph.close()
        stop_reasoner = getattr(self.graph.deps.reasoner, "close", None)  # the LLM client, a local server
        if stop_reasoner:
            stop_reasoner()
        self.store.close()
        self.audit.close()
        if self.ledger is not None:
            self.ledger.close()


def build(settings: Settings, topology: Topology, data_dir: Path | None = None, *, dry_run: bool = True) -> Components:
    """Load rules and contracts, open the store and audit log, and assemble triage and the graph.

    Rule files are checked here, so a bad file stops start-up with its file:line:column.
    """
    data_dir = Path(data_dir or settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rules_dir = settings.rules_dir
    detections = load_detections(rules_dir / "detect" if rules_dir else None)
    guardrails = load_guardrails(rules_dir / "guardrails" if rules_dir else None)
    contracts = load_contracts(rules_dir / "contracts" if rules_dir else None)
    reasoner = DeterministicReasoner()
    versions = {"ruleset": guardrails.digest, "detections": detections.digest, "topology": topology.digest,
                "prompt": "none", "model": "none"}
    store = IncidentStore(data_dir / "rtem.db", synchronous=settings.sqlite_synchronous)
    audit = AuditLog(data_dir / "rtem.db")
    if settings.llm != "none":  # the LLM reasoner, with the deterministic one as its evidence and fallback
        from .llm import build_reasoner

        try:
            reasoner = build_reasoner(settings, contracts=contracts, store=store)
        except BaseException:
            store.close()
            audit.close()
            raise
        versions.update(reasoner.versions)
    triage = Triage(store, Detector(detections, topology), Correlator(topology, settings.correlation_gap_s),
                    after_commit=lambda result: record_correlation(audit, store, result, versions))
    ledger = Ledger(data_dir / "rtem.db")
    from .action_history import SqliteActionHistory  # what guardrail limits count; survives restarts
    from .system_state import StoreState  # what guardrail state preconditions read

    guard = Guard(guardrails, contracts, history=SqliteActionHistory(store), state=StoreState(store))
    deps = Deps(store=store, audit=audit, reasoner=reasoner, guard=guard,
                topology=topology, versions=versions, contracts=contracts, ledger=ledger, dry_run=dry_run,
                policy=Policy(approval_ttl_s=settings.approval_ttl_s, verify_quiet_s=settings.verify_quiet_s,
                              verify_deadline_s=settings.verify_deadline_s),
                watermark=lambda: triage.detector.watermark)
    graph = IncidentGraph(data_dir / "checkpoints.db", deps)
    return Components(settings, topology, store, audit, triage, graph, versions, ledger)


def record_correlation(audit: AuditLog, store: IncidentStore, result: BatchResult, versions: dict[str, str]) -> None:
    """Decision records for what correlation decided in one committed batch."""
    for incident_id in result.opened:
        row = store.incident(incident_id)
        if row is None:  # merged away within the same batch
            continue
        audit.append("incident.opened", incident_id=incident_id, node="correlate",
                     inputs={"detections": row["detections"]},
                     decision={"entities": row["entities"], "severity": row["severity"]},
                     reasons=[f"detection {', '.join(row['detections'])} fired on {', '.join(row['entities'][:5])}"],
                     versions={"detections": versions["detections"], "topology": versions["topology"]})
    for absorbed, keeper in result.merged:
        audit.append("incident.merged", incident_id=keeper, node="correlate",
                     inputs={"absorbed": absorbed}, decision={"into": keeper},
                     reasons=[f"a signal linked {absorbed} and {keeper} in time and topology"],
                     versions={"detections": versions["detections"], "topology": versions["topology"]})


async def publish_audit(bus: Bus, audit: AuditLog) -> int:
    """Copy audit records the AUDIT stream does not have yet; SQLite stays the source of truth."""
    last = await bus.last_audit_seq()
    records = audit.records(since_seq=last)
    for record in records:
        await bus.publish_audit(record.model_dump(mode="json"))
    return len(records)
