"""The guard: built-in checks, every matching guardrail, outcome precedence, and guardrail file errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rules import Proposal, RulesError, Topology
from rules._contracts import load_contracts
from rules._guard import Guard, context_fact
from rules._guardrails import CONTEXT_FIELDS, CONTEXT_PREFIXES, load_guardrails

NIGHT = datetime(2024, 3, 20, 23, 30, tzinfo=timezone.utc)  # a Wednesday
NOON = datetime(2024, 3, 20, 12, 0, tzinfo=timezone.utc)

GUARDRAILS = """\
version: 1
rules:
  - id: scale-out-seen
    match: {action: scale_out}
    outcome: allow
    reason: scale_out is routine.
  - id: big-scale-out
    match:
      action: scale_out
      params.replicas: {gt: 10}
    outcome: require_approval
    approver_role: capacity-owner
    reason: More than ten replicas costs money.
  - id: prod-needs-approval
    match:
      target_labels.env: prod
    outcome: require_approval
    reason: Production changes need a person.
  - id: no-huge-scale-out-at-night
    match:
      action: scale_out
      params.replicas: {gte: 15}
      any:
        - hour: {gte: 22}
        - hour: {lt: 6}
    outcome: deny
    reason: Nobody is around to watch a large scale-out at night.
  - id: tier1-needs-approval
    match:
      target_tier: {lte: 1}
      action: {ne: notify_oncall}
    outcome: require_approval
    reason: Tier-1 service.
  - id: weekend-freeze
    match:
      weekday: {gte: 5}
    outcome: deny
    reason: Change freeze at weekends.
  - id: cart-team-allows
    match: {target_service: cart}
    outcome: allow
    reason: The cart team allows automation (last, so precedence, not order, must decide).
"""


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology.from_dict({
        "entities": [
            {"id": "frontend", "type": "service", "tier": 1}, {"id": "frontend-0", "type": "instance"},
            {"id": "cart", "type": "service", "tier": 2, "labels": {"env": "prod"}},
            {"id": "cart-0", "type": "instance"}, {"id": "node-1", "type": "host"},
            {"id": "orders-db", "type": "database"}, {"id": "stripe", "type": "external"},
            {"id": "billing", "type": "service"},
        ],
        "relations": [
            {"source": "frontend", "target": "cart", "type": "calls"},
            {"source": "frontend-0", "target": "frontend", "type": "instance_of"},
            {"source": "cart-0", "target": "cart", "type": "instance_of"},
            {"source": "cart-0", "target": "node-1", "type": "runs_on"},
            {"source": "cart", "target": "orders-db", "type": "uses"},
            {"source": "cart", "target": "stripe", "type": "calls"},
            {"source": "billing", "target": "orders-db", "type": "uses"},
        ],
    })


@pytest.fixture(scope="module")
def contracts():
    return load_contracts()


@pytest.fixture(scope="module")
def guard(tmp_path_factory, contracts) -> Guard:
    path = tmp_path_factory.mktemp("guardrails") / "test.yaml"
    path.write_text(GUARDRAILS, "utf-8")
    return Guard(load_guardrails(path), contracts)


def judge(guard: Guard, topology: Topology, type: str, target: str, params: dict | None = None, *,
          entities=("cart",), severity: str = "error", at: datetime = NOON):
    return guard.evaluate(Proposal(type=type, target=target, params=params or {}), topology=topology,
                          incident_entities=entities, incident_id="inc-1", incident_severity=severity, at=at)


# -- built-in checks ---------------------------------------------------------------------------------

def test_unknown_action_type_is_denied(guard, topology):
    verdict = judge(guard, topology, "delete_database", "orders-db")
    assert verdict.outcome == "deny"
    assert verdict.rules == ["contract.unknown_action"]
    assert "no action contract for 'delete_database'" in verdict.reasons[0]
    assert verdict.contract is None


def test_bad_params_are_denied_with_their_json_paths(guard, topology, contracts):
    verdict = judge(guard, topology, "scale_out", "billing", {"replicas": 50, "force": True}, entities=["billing"])
    assert verdict.outcome == "deny"
    assert verdict.rules[0] == "contract.invalid"
    assert "$.params.replicas" in verdict.reasons[0] and "$.params.force" in verdict.reasons[0]
    # guardrails are still evaluated, so the record lists every rule that matched
    assert verdict.rules == ["contract.invalid", "scale-out-seen", "big-scale-out"]
    assert verdict.contract == contracts["scale_out"].digest


def test_wrong_target_type_is_denied(guard, topology):
    verdict = judge(guard, topology, "restart_instance", "node-1", entities=["cart-0"])
    assert verdict.outcome == "deny"
    assert verdict.rules == ["contract.invalid"]
    assert "$.target" in verdict.reasons[0]


def test_target_outside_blast_radius_is_denied(guard, topology):
    # orders-db is two relations from cart-0 (cart-0 -> cart -> orders-db)
    verdict = judge(guard, topology, "notify_oncall", "orders-db", {"summary": "s"}, entities=["cart-0"])
    assert verdict.outcome == "deny"
    assert verdict.rules == ["guard.blast_radius"]
    # one relation away is inside
    inside = judge(guard, topology, "notify_oncall", "orders-db", {"summary": "s"}, entities=["cart"])
    assert inside.outcome == "allow"


def test_contract_approval_for_high_risk_action(guard, topology):
    verdict = judge(guard, topology, "failover_database", "orders-db", entities=["orders-db"])
    assert verdict.outcome == "require_approval"
    assert verdict.rules == ["contract.approval"]
    assert verdict.approver_role == "approver"


# -- guardrails --------------------------------------------------------------------------------------

def test_all_matching_guardrails_are_listed_and_strongest_wins(guard, topology):
    verdict = judge(guard, topology, "scale_out", "cart", {"replicas": 15}, at=NIGHT)
    assert verdict.rules == ["scale-out-seen", "big-scale-out", "prod-needs-approval", "no-huge-scale-out-at-night",
                             "cart-team-allows"]
    assert verdict.outcome == "deny"
    assert len(verdict.reasons) == len(verdict.matches) == 5
    assert verdict.approver_role is None


def test_require_approval_beats_allow_and_carries_approver_role(guard, topology):
    verdict = judge(guard, topology, "scale_out", "billing", {"replicas": 12}, entities=["billing"])
    assert verdict.rules == ["scale-out-seen", "big-scale-out"]
    assert verdict.outcome == "require_approval"
    assert verdict.approver_role == "capacity-owner"
    assert [m.approver_role for m in verdict.matches] == [None, "capacity-owner"]


def test_approval_without_a_named_role_defaults_to_approver(guard, topology):
    verdict = judge(guard, topology, "shed_load", "cart", {"percent": 10})
    assert verdict.rules == ["prod-needs-approval", "cart-team-allows"]
    assert verdict.outcome == "require_approval" and verdict.approver_role == "approver"


def test_default_outcome_when_nothing_matches(guard, topology, contracts):
    page = {"summary": "billing is slow"}
    verdict = judge(guard, topology, "notify_oncall", "billing", page, entities=["billing"])
    assert verdict.outcome == "allow" and verdict.rules == [] and verdict.matches == []
    assert "default" in verdict.reason
    strict = Guard(guard.guardrails, contracts, default_outcome="deny")
    assert judge(strict, topology, "notify_oncall", "billing", page, entities=["billing"]).outcome == "deny"
    with pytest.raises(ValueError):
        Guard(guard.guardrails, contracts, default_outcome="maybe")


def test_time_conditions_use_the_event_time_in_utc(guard, topology):
    day = judge(guard, topology, "scale_out", "billing", {"replicas": 15}, entities=["billing"], at=NOON)
    assert "no-huge-scale-out-at-night" not in day.rules and day.outcome == "require_approval"
    night = judge(guard, topology, "scale_out", "billing", {"replicas": 15}, entities=["billing"], at=NIGHT)
    assert "no-huge-scale-out-at-night" in night.rules and night.outcome == "deny"
    # 01:30 at UTC+2 is 23:30 UTC: the guard converts, so it is night
    east = NIGHT.astimezone(timezone(timedelta(hours=2)))
    assert "no-huge-scale-out-at-night" in judge(guard, topology, "scale_out", "billing", {"replicas": 15},
                                                 entities=["billing"], at=east).rules
    saturday = NOON + timedelta(days=3)
    page = {"summary": "billing is slow"}
    weekend = judge(guard, topology, "notify_oncall", "billing", page, entities=["billing"], at=saturday)
    assert weekend.rules == ["weekend-freeze"]
    with pytest.raises(ValueError, match="timezone-aware"):
        judge(guard, topology, "restart_instance", "cart-0", entities=["cart-0"], at=datetime(2024, 3, 20, 12))


def test_instance_inherits_its_service_tier_and_labels(guard, topology):
    verdict = judge(guard, topology, "restart_instance", "frontend-0", entities=["frontend"])
    assert verdict.rules == ["tier1-needs-approval"]
    instance = judge(guard, topology, "restart_instance", "cart-0", entities=["cart-0"])
    assert instance.rules == ["prod-needs-approval", "cart-team-allows"]


def test_built_in_deny_still_lists_matching_guardrails(guard, topology):
    verdict = judge(guard, topology, "scale_out", "frontend", {"replicas": 12}, entities=["billing"])
    assert verdict.rules == ["guard.blast_radius", "scale-out-seen", "big-scale-out", "tier1-needs-approval"]
    assert verdict.outcome == "deny"


def test_verdict_names_ruleset_and_contract_versions(guard, topology, contracts):
    verdict = judge(guard, topology, "shed_load", "cart", {"percent": 20})
    assert verdict.ruleset == guard.guardrails.digest and verdict.ruleset
    assert verdict.contract == contracts["shed_load"].digest


def test_context_fact_fields_are_the_documented_ones(topology, contracts):
    fact = context_fact(Proposal(type="scale_out", target="cart-0", params={"replicas": 2}, cause="cart"),
                        contracts["scale_out"], topology, in_blast_radius=True, incident_id="inc-1",
                        incident_severity="warning", at=NIGHT)
    assert set(fact) <= CONTEXT_FIELDS
    assert fact["target_tier"] == 2 and fact["target_service"] == "cart" and fact["target_labels"] == {"env": "prod"}
    assert (fact["hour"], fact["minute"], fact["weekday"], fact["date"]) == (23, 30, 2, "2024-03-20")
    assert all(field in context_fact.__doc__ for field in CONTEXT_FIELDS)
    assert all(prefix.rstrip(".") in CONTEXT_FIELDS for prefix in CONTEXT_PREFIXES)


# -- the shipped defaults ----------------------------------------------------------------------------

def test_default_guardrails(topology, contracts):
    guard = Guard(load_guardrails(), contracts)
    drain = judge(guard, topology, "drain_host", "node-1", entities=["cart-0"], severity="critical")
    assert drain.outcome == "require_approval"
    assert drain.rules == ["contract.approval", "high-risk-needs-approval", "drain-host-in-critical-incident"]
    external = judge(guard, topology, "open_circuit", "stripe", {"from": "cart"})
    assert external.outcome == "deny" and "deny-external-targets" in external.rules
    page = judge(guard, topology, "notify_oncall", "stripe", {"summary": "stripe is down"})
    assert page.outcome == "allow" and page.rules == ["allow-notify-oncall"]
    # cart-0 is cart's only instance: restarting it restarts all of cart, over the 50% cap
    only = judge(guard, topology, "restart_instance", "cart-0", entities=["cart-0"])
    assert only.outcome == "require_approval" and only.rules == ["restart-at-most-half-a-service"]
    assert "1 of 1 cart instances" in only.reason
    assert judge(guard, topology, "rollback_deploy", "cart", entities=["cart"]).outcome == "allow"


# -- guardrail file errors ---------------------------------------------------------------------------

RULE = "  - id: {id}\n    match: {{action: scale_out}}\n    outcome: deny\n    reason: r\n"
BAD_FILES = {
    "unknown field": ("version: 1\nrules:\n" + RULE.format(id="a") + "    severity: high\n", 7,
                      "unknown field 'severity'"),
    "bad operator": ("version: 1\nrules:\n  - id: a\n    match:\n      action: scale_out\n      target_tier:\n"
                     "        gtee: 1\n    outcome: deny\n    reason: r\n", 7, "unknown operator 'gtee'"),
    "duplicate id": ("version: 1\nrules:\n" + RULE.format(id="a") + RULE.format(id="b") + RULE.format(id="a"),
                     11, "duplicate rule id 'a'"),
    "yaml syntax": ("version: 1\nrules:\n  - id: a\n    match: {action: [scale_out}\n    outcome: deny\n", 4, "YAML"),
    "unknown context field": ("version: 1\nrules:\n  - id: a\n    match:\n      any:\n        - action: x\n"
                              "        - target_teir: 1\n    outcome: deny\n    reason: r\n", 7,
                              "unknown field 'target_teir'"),
    "bad regex": ("version: 1\nrules:\n" + RULE.format(id="a") + "  - id: b\n    match:\n      params.x:\n"
                  "        matches: '(['\n    outcome: deny\n    reason: r\n", 10, "bad regular expression"),
    "bad outcome": ("version: 1\nrules:\n  - id: a\n    match: {}\n    outcome: maybe\n    reason: r\n", 5,
                    "'maybe'"),
    "approver without approval": ("version: 1\nrules:\n" + RULE.format(id="a") + "    approver_role: dba\n", 7,
                                  "approver_role goes only with outcome: require_approval"),
    "reserved id": ("version: 1\nrules:\n" + RULE.format(id="guard.mine"), 3, "reserved"),
    "wrong version": ("version: 2\nrules: []\n", 1, "version 2 is not supported"),
    "too many alternatives": ("version: 1\nrules:\n" + RULE.format(id="a") + "  - id: b\n    match:\n"
                              "      target: {in: [" + ", ".join(f"s{i}" for i in range(20)) + "]}\n"
                              "      action: {in: [" + ", ".join(f"a{i}" for i in range(20)) + "]}\n"
                              "    outcome: deny\n    reason: r\n", 8, "400 alternatives"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_guardrail_file_points_at_the_line(tmp_path: Path, name: str):
    text, line, reason = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(RulesError) as caught:
        load_guardrails(path)
    assert (caught.value.file, caught.value.line) == (str(path), line)
    assert reason in str(caught.value)


def test_duplicate_id_across_files(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="x"), "utf-8")
    (tmp_path / "b.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="y") + RULE.format(id="x"), "utf-8")
    with pytest.raises(RulesError) as caught:
        load_guardrails(tmp_path)
    assert (Path(caught.value.file).name, caught.value.line) == ("b.yaml", 7)
    assert "a.yaml:3" in str(caught.value)


def test_files_load_in_name_order_and_digest_follows_content(tmp_path: Path):
    (tmp_path / "b.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="second"), "utf-8")
    (tmp_path / "a.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="first"), "utf-8")
    ruleset = load_guardrails(tmp_path)
    assert [r.id for r in ruleset.rules] == ["first", "second"]
    assert [r.line for r in ruleset.rules] == [3, 3]
    assert load_guardrails([tmp_path / "b.yaml", tmp_path / "a.yaml"]).digest == ruleset.digest
    (tmp_path / "b.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="changed"), "utf-8")
    assert load_guardrails(tmp_path).digest != ruleset.digest


def test_empty_or_missing_guardrail_source_is_an_error(tmp_path: Path):
    with pytest.raises(RulesError, match="no guardrail files"):
        load_guardrails(tmp_path)
    with pytest.raises(RulesError, match="no such file"):
        load_guardrails(tmp_path / "missing.yaml")


# -- speed -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120, method="thread")  # an engine hang is inside C code, out of reach of signals
def test_evaluation_with_1000_rules_reports_every_match(tmp_path: Path, topology, contracts):
    # How fast is measured by benchmarks/guard_eval.py, not asserted here.
    lines = ["version: 1", "rules:"]
    for i in range(1000):
        # Ten rules match the proposal below. The rest name one target each, which in a single
        # durable-rules ruleset would hang the engine (see MAX_BRANCHES): this also tests the chunking.
        match = ("{action: scale_out, target_tier: {lte: 2}, params.replicas: {gt: 1}}" if i < 10 else
                 f"{{target: svc{i}, action: {{in: [scale_out, shed_load]}}, target_labels.team: t{i}}}")
        lines += [f"  - id: r{i}", f"    match: {match}", f"    outcome: {('allow', 'require_approval')[i % 2]}",
                  f"    reason: rule {i}"]
    (tmp_path / "big.yaml").write_text("\n".join(lines), "utf-8")
    guard = Guard(load_guardrails(tmp_path), contracts)
    proposal = Proposal(type="scale_out", target="cart", params={"replicas": 4})
    kwargs = dict(topology=topology, incident_entities=["cart"], incident_id="inc-1", incident_severity="error",
                  at=NOON)
    verdict = guard.evaluate(proposal, **kwargs)
    assert verdict.rules == [f"r{i}" for i in range(10)]
    assert verdict.outcome == "require_approval"
    other = guard.evaluate(Proposal(type="shed_load", target="svc500", params={"percent": 10}), **kwargs)
    assert "r500" not in other.rules, "a rule on another target's label does not match without the label"


# -- the format's newer parts: gates, collected errors, test files, dates ------------------------------

def test_a_gated_rule_fires_only_when_its_gates_hold_and_says_what_they_saw(tmp_path, topology, contracts):
    from rules._gates import MemoryHistory, RecordedAction

    path = tmp_path / "g.yaml"
    path.write_text("version: 1\nrules:\n  - id: weekday-limit\n    match: {action: scale_out}\n"
                    "    during: [{days: [mon, tue, wed, thu, fri]}]\n    limit: {max: 1, window: 1h}\n"
                    "    outcome: require_approval\n    reason: One scale-out an hour on weekdays.\n", "utf-8")
    guard = Guard(load_guardrails(path), contracts)
    history = MemoryHistory([RecordedAction(NOON - timedelta(minutes=30), "scale_out", "billing")])
    proposal = Proposal(type="scale_out", target="billing", params={"replicas": 2})
    kwargs = dict(topology=topology, incident_entities=["billing"], incident_id="inc-1", incident_severity="error")
    verdict = guard.evaluate(proposal, at=NOON, history=history, **kwargs)
    assert verdict.rules == ["weekday-limit"]
    assert verdict.reason == ("One scale-out an hour on weekdays. (during mon,tue,wed,thu,fri UTC; 1 earlier "
                              "scale_out on billing within 1h; at most 1 allowed)")
    assert guard.evaluate(proposal, at=NOON + timedelta(days=3), history=history, **kwargs).rules == []  # Saturday
    assert guard.evaluate(proposal, at=NOON, **kwargs).rules == []  # no history given: nothing counted
    assert guard.needs_history and not guard.needs_state


def test_severity_rank_and_unquoted_dates_can_be_matched(tmp_path, topology, contracts):
    path = tmp_path / "g.yaml"
    path.write_text("version: 1\nrules:\n  - id: serious\n    match: {incident_severity_rank: {gte: 2}}\n"
                    "    outcome: require_approval\n    reason: r\n  - id: christmas\n    match: {date: 2024-12-25}\n"
                    "    outcome: deny\n    reason: r\n  - id: everything\n    outcome: allow\n"
                    "    reason: no match means all\n",
                    "utf-8")
    guard = Guard(load_guardrails(path), contracts)
    assert judge(guard, topology, "notify_oncall", "billing", {"summary": "s"}, entities=["billing"],
                 severity="warning").rules == ["everything"]
    assert judge(guard, topology, "notify_oncall", "billing", {"summary": "s"}, entities=["billing"],
                 severity="critical").rules == ["serious", "everything"]
    christmas = datetime(2024, 12, 25, 9, tzinfo=timezone.utc)
    assert "christmas" in judge(guard, topology, "notify_oncall", "billing", {"summary": "s"}, entities=["billing"],
                                at=christmas).rules


def test_collect_returns_the_good_rules_and_every_problem(tmp_path):
    from rules._guardrails import collect_guardrails

    (tmp_path / "a.yaml").write_text("version: 1\nrules:\n" + RULE.format(id="ok") + RULE.format(id="bad") +
                                     "    colour: red\n" + RULE.format(id="also-ok"), "utf-8")
    (tmp_path / "a.test.yaml").write_text("not: a guardrail file\n", "utf-8")  # rule tests are skipped
    problems = []
    ruleset = collect_guardrails(tmp_path, problems)
    assert [r.id for r in ruleset.rules] == ["ok", "also-ok"]
    assert [(p.line, p.kind) for p in problems] == [(11, "unknown_field")]
    with pytest.raises(RulesError, match="unknown field 'colour'"):
        load_guardrails(tmp_path)


@pytest.mark.parametrize("name", BAD_FILES)
def test_the_fast_validator_and_the_reference_one_agree(tmp_path: Path, name: str):
    """A valid file skips jsonschema (fastjsonschema says yes); an invalid one is explained by jsonschema."""
    import fastjsonschema
    import yaml

    from rules._guardrail_schema import fast_validator, validator
    from rules._guardrails import _plain

    text = BAD_FILES[name][0]
    try:
        doc = _plain(yaml.safe_load(text))
    except yaml.YAMLError:
        return
    fast_ok = True
    try:
        fast_validator()(doc)
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    reference_ok = not list(validator().iter_errors(doc))
    assert fast_ok == reference_ok or (fast_ok and "approver" in name)  # dependentSchemas: _check_rule repeats it
