"""Remedy fitness: contracts say what each action remedies, the guard denies what does not fit the
diagnosis (rules/_fitness.py), rule files tighten or extend it, and a model's unfit proposals are replaced
by the deterministic remedies (agent/fitness.py). Pure: no server, no clock."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.fitness import diagnosis_of, keep_fit
from agent.models import RootCause
from agent.reasoner import DeterministicReasoner
from agent.reasoner._catalog import ACTION_CATALOG, FAULT_TYPES
from bus import Event
from rules import FAULT_TYPES as RULE_FAULT_TYPES
from rules import (Diagnosis, Guard, Proposal, RulesError, Topology, load_contracts, load_guardrails,
                   packaged_rules_dir)

AT = datetime(2026, 12, 3, 14, 0, tzinfo=timezone.utc)
CONTRACTS = load_contracts()


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology.load(Path(str(resources.files("agent") / "demo" / "topology.yaml")))


@pytest.fixture(scope="module")
def guard():
    built = Guard(load_guardrails(), CONTRACTS)
    yield built
    built.close()


def _event(n: int, subject: str, kind: str = "rtem.metric.anomaly", severity: str = "error") -> Event:
    return Event(id=f"e{n}", source="/test", type=kind, time=AT, subject=subject, severity=severity,
                 attributes={"metric": "cpu_usage", "value": 0.99})


def _judge(guard, topology, proposal, diagnosis):
    return guard.evaluate(proposal, topology=topology, incident_entities=[diagnosis.cause, proposal.target],
                          incident_id="inc-1", incident_severity="error", at=AT, diagnosis=diagnosis)


def test_the_catalog_and_the_rules_share_one_fault_vocabulary():
    assert set(FAULT_TYPES) == set(RULE_FAULT_TYPES)


def test_the_demo_llm_drain_of_a_host_for_a_process_fault_on_an_instance_is_denied(guard, topology):
    # What SmolLM2 proposed in `rtem demo --llm local` (issue 17): drain node-3 for auth-1's crash loop.
    diagnosis = Diagnosis(cause="auth-1", fault="process", signals={"auth-1": 5, "node-3": 1})
    verdict = _judge(guard, topology, Proposal(type="drain_host", target="node-3", cause="auth-1",
                                               proposed_by="llm:smol"), diagnosis)
    assert verdict.outcome == "deny"
    assert "fitness.drain_host.causes" in verdict.rules
    reason = next(m.reason for m in verdict.matches if m.id == "fitness.drain_host.causes")
    assert reason == "does not remedy the diagnosed cause: drain_host remedies a cause that is a host; auth-1 is an instance"


def test_a_drain_fits_a_host_fault_only_with_the_hosts_own_signals(guard, topology):
    drain = Proposal(type="drain_host", target="node-3", cause="node-3", proposed_by="llm:m")
    backed = Diagnosis(cause="node-3", fault="cpu", signals={"node-3": 2, "auth-1": 4})
    assert guard.unfit(drain, topology, backed) == []
    unbacked = Diagnosis(cause="node-3", fault="cpu", signals={"auth-1": 4, "catalog-0": 3})
    assert [m.id for m in guard.unfit(drain, topology, unbacked)] == ["fitness.drain_host.evidence.target_signals"]


def test_a_rollback_needs_a_deployment_of_its_target_in_the_incident(guard, topology):
    rollback = Proposal(type="rollback_deploy", target="catalog", cause="catalog", proposed_by="llm:m")
    assert [m.id for m in guard.unfit(rollback, topology, Diagnosis(cause="catalog", fault="errors"))] == [
        "fitness.rollback_deploy.evidence.target_deployed"]
    deployed = Diagnosis(cause="catalog-1", fault="bad_deploy", deployed=("catalog-0",))
    assert guard.unfit(rollback, topology, deployed) == []  # the cause's service, deployed through an instance
    other = Diagnosis(cause="catalog-1", fault="bad_deploy", deployed=("auth",))
    assert guard.unfit(rollback, topology, other)


def test_a_failover_only_answers_a_database_fault(guard, topology):
    failover = Proposal(type="failover_database", target="orders-db", cause="orders", proposed_by="llm:m")
    ids = [m.id for m in guard.unfit(failover, topology, Diagnosis(cause="orders", fault="connections"))]
    assert ids == ["fitness.failover_database.causes", "fitness.failover_database.targets"]
    assert guard.unfit(failover, topology, Diagnosis(cause="orders-db", fault="connections")) == []


def test_every_fault_a_remedy_is_not_for_is_named(guard, topology):
    scale = Proposal(type="scale_out", target="catalog", params={"replicas": 3}, cause="catalog", proposed_by="x")
    unfit = guard.unfit(scale, topology, Diagnosis(cause="catalog", fault="disk_space"))
    assert [m.id for m in unfit] == ["fitness.scale_out.faults"]
    assert "the diagnosis says disk_space at catalog" in unfit[0].reason


def test_without_a_diagnosis_the_guard_judges_no_fitness(guard, topology):
    verdict = guard.evaluate(Proposal(type="drain_host", target="node-3"), topology=topology,
                             incident_entities=["auth-1", "node-3"], incident_id="inc-1", incident_severity="error",
                             at=AT)
    assert not any(r.startswith("fitness.") for r in verdict.rules)
    assert verdict.outcome == "require_approval"


def _catalog_cases(topology: Topology):
    causes = {"instance": "catalog-0", "service": "catalog", "host": "node-3", "database": "orders-db",
              "cache": None, "queue": "orders-queue", "external": None}
    for (entity_type, fault), _ in ACTION_CATALOG.items():
        cause = causes.get(entity_type)
        if cause is None:
            continue
        for fault_type in (FAULT_TYPES if fault == "*" else [fault]):
            yield cause, fault_type


def test_every_deterministic_remedy_fits_the_cause_it_is_proposed_for(guard, topology):
    """The catalog and the contracts' remedies agree: the deterministic reasoner never proposes what the
    guard would deny as unfit (given the evidence the proposal itself needs)."""
    reasoner = DeterministicReasoner()
    checked = 0
    for cause, fault in _catalog_cases(topology):
        events = [_event(1, cause), _event(2, topology.service_of(cause)), _event(3, "orders"),
                  _event(4, cause, "rtem.change.deploy", "info")]
        root = RootCause(entity=cause, fault_type=fault, confidence=0.9, evidence=["e1"], explanation="-")
        diagnosis = diagnosis_of([root], events, topology)
        for proposal in reasoner.remedies([root], topology, events):
            assert guard.unfit(proposal, topology, diagnosis) == [], (cause, fault, proposal)
            checked += 1
    assert checked > 80


def test_rule_files_tighten_and_extend_what_an_action_remedies(tmp_path, topology):
    (tmp_path / "fitness.yaml").write_text(
        "version: 1\n"
        "remedies:\n"
        "  restart_instance:\n"
        "    faults: [process]\n"          # tighter: a restart answers a crash, nothing else
        "  drain_host:\n"
        "    causes: [host, instance]\n"   # wider: drain the host of a sick instance
        "    targets: [cause, host_of_cause]\n"
        "rules:\n"
        "  - id: no-scale-for-memory\n"
        "    match: {action: scale_out, cause_fault: memory}\n"
        "    outcome: deny\n"
        "    reason: More replicas of a leaking service only leak more.\n")
    guard = Guard(load_guardrails(tmp_path), CONTRACTS)
    try:
        restart = Proposal(type="restart_instance", target="auth-1", cause="auth-1", proposed_by="x")
        assert [m.id for m in guard.unfit(restart, topology, Diagnosis(cause="auth-1", fault="memory"))] == [
            "fitness.restart_instance.faults"]
        assert guard.unfit(restart, topology, Diagnosis(cause="auth-1", fault="process")) == []
        unfit = guard.unfit(restart, topology, Diagnosis(cause="auth-1", fault="memory"))
        assert unfit[0].reason.endswith("the diagnosis says memory at auth-1")
        assert guard.fitness["fitness.restart_instance.faults"].source.endswith("fitness.yaml:4")
        drain = Proposal(type="drain_host", target="node-3", cause="auth-1", proposed_by="x")
        assert guard.unfit(drain, topology, Diagnosis(cause="auth-1", fault="cpu", signals={"node-3": 1})) == []
        scale = Proposal(type="scale_out", target="auth", params={"replicas": 3}, cause="auth")
        verdict = _judge(guard, topology, scale, Diagnosis(cause="auth", fault="memory"))
        assert verdict.outcome == "deny" and "no-scale-for-memory" in verdict.rules
    finally:
        guard.close()


@pytest.mark.parametrize("section, where", [
    ("remedies:\n  drain_host:\n    faults: [cpu, typo]\n", 4),
    ("remedies:\n  drain_host:\n    when: [cpu]\n", 4),
])
def test_a_malformed_remedies_section_is_refused_at_its_line(tmp_path, section, where):
    (tmp_path / "bad.yaml").write_text("version: 1\n" + section + "rules: []\n")
    with pytest.raises(RulesError) as caught:
        load_guardrails(tmp_path)
    assert caught.value.line == where, str(caught.value)


def test_fitness_ids_are_reserved(tmp_path):
    (tmp_path / "r.yaml").write_text("version: 1\nrules:\n  - id: fitness.mine\n    outcome: deny\n    reason: x\n")
    with pytest.raises(RulesError, match="reserved"):
        load_guardrails(tmp_path)


def test_unfit_model_proposals_are_replaced_by_the_deterministic_remedies(guard, topology):
    events = [_event(1, "auth-1"), _event(2, "auth-1"), _event(3, "auth")]
    causes = [RootCause(entity="auth-1", fault_type="process", confidence=0.8, evidence=["e1"], explanation="-")]
    proposed = [Proposal(type="drain_host", target="node-3", cause="auth-1", proposed_by="llm:smol"),
                Proposal(type="drain_host", target="node-1", cause="auth-1", proposed_by="llm:smol"),
                Proposal(type="notify_oncall", target="auth-1", cause="auth-1", proposed_by="llm:smol",
                         params={"summary": "Proposed: drain_host node-3, drain_host node-1."})]
    remedies = DeterministicReasoner().remedies(causes, topology, events)
    kept, notes = keep_fit(proposed, diagnosis_of(causes, events, topology), topology, guard, remedies)
    assert [(p.type, p.target, p.proposed_by) for p in kept] == [
        ("restart_instance", "auth-1", "deterministic"), ("notify_oncall", "auth-1", "llm:smol")]
    assert len(notes) == 3 and notes[0].startswith("unfit proposal replaced: drain_host on node-3 (llm:smol): "
                                                   "fitness.drain_host.causes")
    assert notes[-1].endswith("restart_instance on auth-1")
    assert "planned: restart_instance auth-1" in kept[-1].params["summary"]


def test_fit_model_proposals_are_kept_as_they_are(guard, topology):
    events = [_event(1, "auth-1")]
    causes = [RootCause(entity="auth-1", fault_type="memory", confidence=0.8, evidence=["e1"], explanation="-")]
    proposed = [Proposal(type="restart_instance", target="auth-1", cause="auth-1", proposed_by="llm:m")]
    kept, notes = keep_fit(proposed, diagnosis_of(causes, events, topology), topology, guard, [])
    assert kept == proposed and notes == []


def _check(tmp_path, guardrails: str) -> tuple[int, list[dict]]:
    """`rtem rules check --json` on the packaged contracts and one guardrail file: exit code, findings."""
    root = tmp_path / "rules"
    (root / "guardrails").mkdir(parents=True)
    shutil.copytree(packaged_rules_dir() / "contracts", root / "contracts")
    (root / "guardrails" / "g.yaml").write_text(guardrails)
    result = CliRunner().invoke(app, ["rules", "check", str(root), "--json"])
    return result.exit_code, json.loads(result.stdout)["findings"]


def test_rules_check_points_at_every_remedies_problem(tmp_path):
    code, found = _check(tmp_path, "version: 1\n"
                                   "remedies:\n"
                                   "  drain_hots:\n"
                                   "    causes: [host]\n"
                                   "  restart_instance:\n"
                                   "    faults: [cpu, memroy]\n"
                                   "rules: []\n")
    assert code == 1
    findings = {(f["line"], f["kind"]): f for f in found}
    assert findings[(3, "unknown_action")]["message"] == "remedies names unknown action type 'drain_hots'"
    assert "did you mean 'drain_host'" in findings[(3, "unknown_action")]["suggestion"]
    assert any(line == 6 for line, _ in findings), findings


def test_rules_check_knows_the_values_of_the_diagnosis_fields(tmp_path):
    _, found = _check(tmp_path, "version: 1\nrules:\n  - id: no-drain-for-cpu\n"
                                "    match: {action: drain_host, cause_fault: cpuu}\n    outcome: deny\n    reason: r\n")
    [finding] = [f for f in found if f["kind"] == "never_matches"]
    assert finding["line"] == 4 and "'cpu'" in finding["suggestion"], finding
