"""`rtem rules replay`: judge past proposals again with an edited rule set, before the change ships.

Every verdict the guard gave is in the audit log (`action.verdict`): the proposal, and the context it
was judged in (incident entities and severity, the event time, the action-history seq it could see, the
diagnosis its remedy fitness was judged against).
Replay evaluates each proposal since a time with the rule set under test, in that same context: the
action history as it was then (agent/action_history.py, `as_of(seq)`), the observed state as of that
event time (agent/system_state.py), the topology given. It reports every verdict whose outcome would
change, and why: which rules would now match that did not, and which no longer would.
Records written before the context was recorded fall back to the incident as stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bus import parse_time
from rules import CheckReport, Diagnosis, Proposal, Topology

from .action_history import DbActionHistory
from .audit import AuditLog
from .store import IncidentStore
from .system_state import StoreState


@dataclass
class ReplayedVerdict:
    seq: int
    recorded_at: str
    incident_id: str | None
    at: str
    proposal: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    context: str  # "record" or "store" (older records)

    @property
    def outcome_changed(self) -> bool:
        return self.before["outcome"] != self.after["outcome"]

    @property
    def rules_changed(self) -> bool:
        return set(self.before["rules"]) != set(self.after["rules"])

    @property
    def added(self) -> list[str]:
        return [r for r in self.after["rules"] if r not in self.before["rules"]]

    @property
    def removed(self) -> list[str]:
        return [r for r in self.before["rules"] if r not in self.after["rules"]]

    def why(self) -> list[str]:
        """The reasons behind the change: each rule that now matches, each that no longer does."""
        reasons = dict(zip(self.after["rules"], self.after["reasons"]))
        lines = [f"now matches {rule_id}: {reasons.get(rule_id, '')}" for rule_id in self.added]
        lines += [f"no longer matches {rule_id}" for rule_id in self.removed]
        return lines or ["same rules, different outcome (the default outcome or a rule's outcome changed)"]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "recorded_at": self.recorded_at, "incident_id": self.incident_id, "at": self.at,
                "proposal": self.proposal, "before": self.before, "after": self.after, "context": self.context,
                "outcome_changed": self.outcome_changed, "added_rules": self.added, "removed_rules": self.removed,
                "why": self.why()}


@dataclass
class ReplayReport:
    since: datetime
    rules_dir: str
    digest: str
    records: int = 0
    verdicts: list[ReplayedVerdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[ReplayedVerdict]:
        return [v for v in self.verdicts if v.outcome_changed]

    @property
    def rules_only(self) -> list[ReplayedVerdict]:
        return [v for v in self.verdicts if v.rules_changed and not v.outcome_changed]

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "rules": {"dir": self.rules_dir, "digest": self.digest},
                "records": self.records, "changed": [v.to_dict() for v in self.changed],
                "rules_changed": [v.to_dict() for v in self.rules_only],
                "unchanged": self.records - len(self.changed) - len(self.rules_only), "warnings": self.warnings}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO date or date-time (UTC unless it says otherwise), or a duration ago (`24h`, `7d`)."""
    now = now or datetime.now(timezone.utc)
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d|w)", text.strip())
    if found:
        seconds = float(found[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[found[2]]
        return now - timedelta(seconds=seconds)
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def replay(db_path: str | Path, rules: CheckReport, topology: Topology, since: datetime,
           until: datetime | None = None) -> ReplayReport:
    """Judge every `action.verdict` recorded at or after `since` (wall-clock time of the record) again
    with the checked rule set `rules`; see the module docstring."""
    report = ReplayReport(since, str(rules.layout.root), rules.digest)
    audit = AuditLog(db_path)
    store = IncidentStore(db_path)
    history = DbActionHistory(store)
    try:
        guard = rules.guard.bind(state=StoreState(store))
        topologies = set()
        for record in audit.records(kind="action.verdict"):
            if record.at < since or (until is not None and record.at >= until):
                continue
            report.records += 1
            topologies.add(record.versions.get("topology"))
            proposal = Proposal.model_validate(record.inputs["proposal"])
            context, source = _context(record, store)
            if context is None:
                report.warnings.append(f"seq {record.seq}: incident {record.incident_id} is not in the store; skipped")
                continue
            at = parse_time(context["at"])
            seq = context.get("history_seq")
            past = history.as_of(seq) if seq is not None else history.as_of(before=at)
            if record.incident_id:  # judged as live: by the other incidents' actions (graph/_steps.py)
                past = past.excluding(record.incident_id)
            diagnosis = Diagnosis.model_validate(context["diagnosis"]) if context.get("diagnosis") else None
            verdict = guard.evaluate(proposal, topology=topology, incident_entities=context["incident_entities"],
                                     incident_id=record.incident_id or "", at=at,
                                     incident_severity=context["incident_severity"], history=past,
                                     diagnosis=diagnosis)
            report.verdicts.append(ReplayedVerdict(
                seq=record.seq, recorded_at=record.at.isoformat(), incident_id=record.incident_id,
                at=context["at"], proposal=proposal.model_dump(exclude_defaults=True),
                before={"outcome": record.decision.get("outcome"), "rules": record.decision.get("rules", []),
                        "ruleset": record.versions.get("ruleset", "")},
                after={"outcome": verdict.outcome, "rules": verdict.rules, "reasons": verdict.reasons,
                       "ruleset": verdict.ruleset},
                context=source))
        topologies.discard(None)
        if topologies and topologies != {topology.digest}:
            report.warnings.append(f"the verdicts were judged with topology {', '.join(sorted(topologies))}; "
                                   f"this replay uses {topology.digest}, so blast radius and tiers may differ")
    finally:
        store.close()
        audit.close()
    return report


def _context(record, store: IncidentStore) -> tuple[dict[str, Any] | None, str]:
    context = record.inputs.get("context")
    if context:
        return context, "record"
    row = store.incident(record.incident_id) if record.incident_id else None
    if row is None:
        return None, "store"
    return {"incident_entities": row["entities"], "incident_severity": row["severity"], "at": row["updated_at"],
            "history_seq": None}, "store"
