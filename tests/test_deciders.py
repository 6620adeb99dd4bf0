"""Which reasoner ranked each incident's causes, as `rtem incidents` shows it (agent/deciders.py)."""

from __future__ import annotations

from agent.audit import AuditLog
from agent.deciders import Decider, deciders


def test_the_latest_ranking_of_each_incident_names_its_reasoner(tmp_path):
    with AuditLog(tmp_path / "rtem.db") as audit:
        audit.append("causes.ranked", incident_id="inc-a", decision={"reasoner": {"reasoner": "deterministic"}})
        audit.append("causes.ranked", incident_id="inc-a", decision={"reasoner": {"reasoner": "llm"}},
                     versions={"model": "m-1"})
        audit.append("causes.ranked", incident_id="inc-b", decision={"reasoner": {
            "reasoner": "deterministic", "fallback": "degraded mode: the provider's breaker is open"}})
        audit.append("causes.ranked", incident_id="inc-c", decision={"reasoner": {
            "reasoner": "deterministic", "fallback": "still invalid after 2 re-asks"}})
        audit.append("causes.ranked", incident_id="inc-d")
        audit.append("incident.opened", incident_id="inc-e")
        found = deciders(audit)

    assert found["inc-a"] == Decider("llm", None, False, "m-1")
    assert found["inc-b"].degraded and found["inc-b"].fallback.startswith("degraded mode")
    assert not found["inc-c"].degraded and found["inc-c"].fallback
    assert found["inc-d"].to_dict() == {"reasoner": "?", "fallback": None, "degraded": False, "model": "none"}
    assert "inc-e" not in found
