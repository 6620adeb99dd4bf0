"""Wiring: build rtem's components from settings, the same way for `analyze`, `run` and `demo`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bus import Bus
from rules import Correlator, Detector, Topology

from .action_history import DbActionHistory
from .audit import AuditLog
from .cluster import Leadership, Leases, Ownership, default_worker_id
from .config import Settings
from .db import Database, migrate
from .executors import Executors
from .files import private_data_dir
from .graph import Deps, IncidentGraph
from .incident import Policy
from .investigate import build_investigator
from .ledger import Ledger
from .reasoner import DeterministicReasoner
from .rules_reload import RulesReloader
from .rules_shared import SharedRules
from .ruleset import FixedRules, RuleSource
from .storage import SCHEMAS, database_of
from .store import IncidentStore
from .system_state import StoreState
from .topology_reload import FixedTopology, TopologyReloader, TopologySource
from .triage import WATERMARK, BatchResult, Triage


@dataclass
class Components:
    settings: Settings
    topology: TopologySource  # a TopologyReloader when built with hot_reload and a topology file
    store: IncidentStore
    audit: AuditLog
    triage: Triage
    graph: IncidentGraph
    rules: RuleSource  # a RulesReloader when built with hot_reload
    ledger: Ledger
    db: Database  # the one every component above writes to; closed last
    leadership: Leadership | None = None  # rtem run's: whether this worker leads (agent/cluster)
    ownership: Ownership | None = None  # rtem run's: the incidents this worker drives (agent/cluster)

    async def open(self) -> Components:
        await self.graph.open()
        return self

    async def close(self) -> None:
        await self.graph.close()
        stop_reasoner = getattr(self.graph.deps.reasoner, "close", None)  # the LLM client, a local server
        if stop_reasoner:
            stop_reasoner()
        if self.graph.deps.investigator is not None:
            self.graph.deps.investigator.close()
        self.rules.close()
        self.triage.detector.close()
        self.store.close()
        self.audit.close()
        self.ledger.close()
        self.db.close()


def build(settings: Settings, topology: Topology, data_dir: Path | None = None, *, dry_run: bool = True,
          executors: Executors | None = None, hot_reload: bool = False,
          database: str | Path | None = None, lead: bool = False) -> Components:
    """Load rules and contracts, open the store and audit log, and assemble triage and the graph,
    once: nothing is rewired afterwards.

    Rule files are checked here, so a bad file stops start-up with its file:line:column. With
    `hot_reload` (rtem run) the rules are a `RulesReloader`, whose `watch()` or `reload()` swaps a
    changed set in; the graph and triage read the set in force from it. `executors` carry out the
    steps (none: `analyze`, whose plans stay proposals). The records go to `database` (a SQLite file
    or a `postgresql://` URL), else the configured one (RTEM_DATABASE_URL, else DATA_DIR/rtem.db).
    With `lead` (rtem run), the components act for this worker of a cluster: triage's batches are
    fenced by the leader lease, and the ledger's steps by the lease of the incident they belong to
    (agent/cluster; docs/deployment.md).
    """
    data_dir = Path(data_dir or settings.data_dir)
    db = database_of(settings, database)
    on_postgres = db.dialect.name == "postgres"
    # 0700, and the SQLite files it will hold 0600 before SQLite creates them (none for PostgreSQL).
    private_data_dir(data_dir, () if on_postgres else ("rtem.db", "checkpoints.db"))
    opened: list = [db]
    try:
        migrate(db, SCHEMAS)  # every component's tables at once; a database a newer rtem made is refused here
        worker_id = settings.worker_id or default_worker_id(data_dir)
        leadership = Leadership(Leases(db), worker_id, settings.leader_lease_s) if lead else None
        ownership = Ownership(Leases(db), worker_id, settings.leader_lease_s) if lead else None
        store = IncidentStore(db)
        opened.append(store)
        audit = AuditLog(db)
        opened.append(audit)
        ledger = Ledger(db, fence=ownership.fence if ownership else None)
        opened.append(ledger)
        # What guardrail limits count (survives restarts) and what state preconditions read.
        history, state = DbActionHistory(store), StoreState(store)
        rules: RuleSource = (
            RulesReloader(settings.rules_dir, audit=audit, history=history, state=state, actor="rtem run",
                          shared=SharedRules(db), worker_id=worker_id)
            if hot_reload else FixedRules.load(settings.rules_dir, history=history, state=state))
        opened.append(rules)
        # The topology file is watched like the rules (agent/topology_reload.py): read from it, not `topology`.
        topologies: TopologySource = (
            TopologyReloader(settings.topology, audit=audit, actor="rtem run")
            if hot_reload and settings.topology and (settings.topology_reload or settings.topology_mapping)
            else FixedTopology(topology))
        reasoner = DeterministicReasoner()
        investigator = build_investigator(settings)  # a bad query file stops start-up at its file:line
        base_versions = {"topology": topology.digest, "prompt": "none", "model": "none"}
        if settings.llm != "none":  # the LLM reasoner, with the deterministic one as its evidence and fallback
            from .llm import PrometheusTool, build_reasoner

            tools = (PrometheusTool(investigator, audit, settings.prometheus_llm_calls)
                     if investigator is not None and settings.prometheus_llm_calls else None)
            reasoner = build_reasoner(settings, contracts=rules.current().guard.contracts, store=store, tools=tools,
                                      audit=audit, guard=lambda: rules.current().guard)
            base_versions.update(reasoner.versions)
    except BaseException:
        for part in reversed(opened):
            part.close()
        raise

    def detections():
        return rules.current().detections

    def watermark() -> float:
        """Event time as triage has it: its own while this worker leads (or works alone), else as the
        leader saved it with its last batch."""
        if leadership is None or leadership.leading:
            return triage.watermark
        return float(store.load_state(WATERMARK, 0.0))

    def correlation_versions() -> dict[str, str]:
        return {"detections": detections().digest, "topology": topologies.current().digest}

    now = topologies.current()
    triage = Triage(store, Detector(detections(), now), Correlator(now, settings.correlation_gap_s),
                    after_commit=lambda result: record_correlation(audit, store, result, correlation_versions()),
                    detections=detections, topology=topologies.current, fence=leadership.fence if leadership else None)
    deps = Deps(store=store, audit=audit, reasoner=reasoner, rules=rules, topologies=topologies,
                base_versions=base_versions, ledger=ledger, executors=executors, dry_run=dry_run,
                policy=Policy(approval_ttl_s=settings.approval_ttl_s, verify_quiet_s=settings.verify_quiet_s,
                              verify_deadline_s=settings.verify_deadline_s),
                watermark=watermark, worker=worker_id if lead else None, investigator=investigator)
    # Checkpoints beside the records: in PostgreSQL with them, else in a SQLite file of their own.
    graph = IncidentGraph(db.target if on_postgres else data_dir / "checkpoints.db", deps)
    return Components(settings, topologies, store, audit, triage, graph, rules, ledger, db, leadership, ownership)


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
                     versions=versions)
    for absorbed, keeper in result.merged:
        audit.append("incident.merged", incident_id=keeper, node="correlate",
                     inputs={"absorbed": absorbed}, decision={"into": keeper},
                     reasons=[f"a signal linked {absorbed} and {keeper} in time and topology"],
                     versions=versions)


async def publish_audit(bus: Bus, audit: AuditLog, page: int = 500) -> int:
    """Copy audit records the AUDIT stream does not have yet, a page at a time; SQLite stays the source of
    truth."""
    last = await bus.last_audit_seq()
    published = 0
    while records := audit.records(since_seq=last, limit=page):
        for record in records:
            await bus.publish_audit(record.model_dump(mode="json"))
        published += len(records)
        last = records[-1].seq
    return published


async def check_audit_copy(bus: Bus, audit: AuditLog) -> bool:
    """At start: False, and an error logged, when the AUDIT stream holds records past the log's end
    (they were deleted from the log; `rtem audit verify` names them)."""
    last, head = await bus.last_audit_seq(), audit.last()
    if head is not None and head.seq < last:
        logging.getLogger("rtem.audit").error(
            "the AUDIT stream has records up to seq %d but %s ends at seq %d: records were deleted from the "
            "audit log; run `rtem audit verify` to name them", last, audit.where, head.seq)
        return False
    return True
