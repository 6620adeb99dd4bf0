"""`rtem rules check | test | replay`: every error class at its exact place, test diffs and coverage, replays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from rules._check import check_rules, packaged_rules_dir
from tests.conftest import EXAMPLES

runner = CliRunner()
PACKAGED = packaged_rules_dir()
RULE = "  - id: {id}\n    match: {{action: scale_out}}\n    outcome: deny\n    reason: r\n"


def rules_dir(tmp_path: Path, guardrails: dict[str, str] | None = None, *, detect: bool = False) -> Path:
    root = tmp_path / "rules"
    (root / "guardrails").mkdir(parents=True)
    shutil.copytree(PACKAGED / "contracts", root / "contracts")
    if detect:
        shutil.copytree(PACKAGED / "detect", root / "detect")
    for name, text in (guardrails or {"default.yaml": (PACKAGED / "guardrails" / "default.yaml").read_text()}).items():
        (root / "guardrails" / name).write_text(text, "utf-8")
    return root


def rtem(*args):
    return runner.invoke(app, [str(a) for a in args])


def findings(root: Path) -> list[tuple[str, str, int, int]]:
    result = rtem("rules", "check", root, "--json")
    return [(f["kind"], Path(f["file"]).name, f["line"], f["column"]) for f in json.loads(result.stdout)["findings"]]


def at(text: str, line: int, needle: str) -> tuple[int, int]:
    """(line, column) of `needle` on 1-based `line` of `text`: where an error must point."""
    return line, text.splitlines()[line - 1].index(needle) + 1


# -- check -------------------------------------------------------------------------------------------

def test_the_shipped_rules_pass(tmp_path):
    result = rtem("rules", "check")
    assert result.exit_code == 0, result.output
    assert "rules OK" in result.stdout and "11 rules" in result.stdout and "1 test file" in result.stdout
    report = json.loads(rtem("rules", "check", "--json").stdout)
    assert report["ok"] and report["findings"] == [] and len(report["digest"]) == 16
    assert report["counts"]["contracts"] == 8 and report["counts"]["detections"] > 0


CHECK_CASES = {
    "unknown field": ("version: 1\nrules:\n" + RULE.format(id="a") + "    severity: high\n",
                      "unknown_field", 7, "severity"),
    "unknown context field": ("version: 1\nrules:\n  - id: a\n    match: {action: scale_out, target_teir: 1}\n"
                              "    outcome: deny\n    reason: r\n", "unknown_field", 4, "target_teir"),
    "unknown action type": ("version: 1\nrules:\n  - id: a\n    match: {action: {in: [scale_out, restart_instanse]}}\n"
                            "    outcome: deny\n    reason: r\n", "unknown_action", 4, "restart_instanse"),
    "duplicate id": ("version: 1\nrules:\n" + RULE.format(id="a") + RULE.format(id="a"), "duplicate_id", 7, "id"),
    "never matches": ("version: 1\nrules:\n  - id: a\n    match:\n      action: scale_out\n"
                      "      params.replicas: {gt: 5, lt: 3}\n    outcome: deny\n    reason: r\n",
                      "never_matches", 6, "gt"),
    "shadowed by an earlier deny": ("version: 1\nrules:\n  - id: deny-scale-out\n    match: {action: scale_out}\n"
                                    "    outcome: deny\n    reason: r\n  - id: allow-small\n"
                                    "    match: {action: scale_out, params.replicas: {lte: 3}}\n"
                                    "    outcome: allow\n    reason: r\n", "shadowed", 9, "outcome"),
    "bad operator": ("version: 1\nrules:\n  - id: a\n    match: {target_tier: {gtee: 1}}\n    outcome: deny\n"
                     "    reason: r\n", "unknown_field", 4, "gtee"),
    "reserved id": ("version: 1\nrules:\n" + RULE.format(id="guard.mine"), "reserved_id", 3, "id"),
}


@pytest.mark.parametrize("name", CHECK_CASES)
def test_check_reports_each_error_class_at_its_place(tmp_path, name):
    text, kind, line, needle = CHECK_CASES[name]
    root = rules_dir(tmp_path, {"mine.yaml": text})
    result = rtem("rules", "check", root)
    assert result.exit_code == 1, result.output
    place = at(text, line, needle)
    assert (kind, "mine.yaml", *place) in findings(root)
    assert f"mine.yaml:{place[0]}:{place[1]}: error[{kind}]" in result.stdout


def test_check_collects_every_problem_across_files_and_gives_hints(tmp_path):
    good = RULE.format(id="a")
    root = rules_dir(tmp_path, {"a.yaml": "version: 1\nrules:\n" + good,
                                "b.yaml": "version: 1\nrules:\n" + RULE.format(id="a") + "  - id: c\n"
                                          "    match: {hour: {gt: 23}}\n    outcome: deny\n    reason: r\n",
                                "c.yaml": "version: 1\nrules:\n  - id: d\n    match: {target_type: databse}\n"
                                          "    outcome: deny\n    reason: r\n"})
    report = json.loads(rtem("rules", "check", root, "--json").stdout)
    assert [(Path(f["file"]).name, f["line"], f["kind"]) for f in report["findings"]] == [
        ("b.yaml", 3, "duplicate_id"), ("b.yaml", 8, "never_matches"), ("c.yaml", 4, "never_matches")]
    duplicate, hour, typo = report["findings"]
    assert "a.yaml:3" in duplicate["hint"]
    assert "hour runs from 0 to 23; none is > 23" in hour["message"]
    assert "did you mean 'database'?" in typo["hint"]


def test_check_contracts_and_detections_with_their_place(tmp_path):
    root = rules_dir(tmp_path, detect=True)
    contract = root / "contracts" / "scale_out.json"
    doc = json.loads(contract.read_text())
    doc["properties"]["replicas"].pop("maximum")
    doc["x-rtem"]["priority"] = 1
    contract.write_text(json.dumps(doc, indent=2))
    (root / "detect" / "default.yaml").write_text("version: 1\ndetections:\n  - id: x\n    match: {type: rtem.log}\n"
                                                   "    threshold: {count: 5}\n")
    report = json.loads(rtem("rules", "check", root, "--json").stdout)
    by_file = {Path(f["file"]).name: f for f in report["findings"]}
    text = contract.read_text()
    assert by_file["scale_out.json"]["kind"] == "unknown_field"
    assert (by_file["scale_out.json"]["line"], by_file["scale_out.json"]["column"]) == at(
        text, next(i for i, line in enumerate(text.splitlines(), 1) if '"priority"' in line), '"priority"')
    assert by_file["default.yaml"]["kind"] == "detection" and by_file["default.yaml"]["line"] == 5
    assert not report["ok"]


def test_check_warnings_pass_unless_strict(tmp_path):
    text = ("version: 1\nrules:\n  - id: old-freeze\n    during: [{from: '2020-12-20', to: '2021-01-02'}]\n"
            "    outcome: deny\n    reason: r\n")
    root = rules_dir(tmp_path, {"a.yaml": text})
    result = rtem("rules", "check", root)
    assert result.exit_code == 0 and "warning[expired]" in result.stdout and "1 warning" in result.stdout
    assert rtem("rules", "check", root, "--strict").exit_code == 1


def test_check_usage_errors_exit_2(tmp_path):
    result = rtem("rules", "check", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such file or directory" in result.output


def test_check_handles_a_thousand_rules(tmp_path):
    lines = ["version: 1", "rules:"]
    for i in range(1000):
        lines += [f"  - id: r{i}", f"    match: {{target: svc{i}, action: {{in: [scale_out, shed_load]}}}}",
                  f"    outcome: {('deny', 'require_approval')[i % 2]}", f"    reason: rule {i}"]
    root = rules_dir(tmp_path, {"big.yaml": "\n".join(lines)})
    report = check_rules(root)
    assert report.ok and report.counts()["guardrails"] == 1000  # benchmarks/rules_check.py measures the time


# -- test --------------------------------------------------------------------------------------------

def test_the_shipped_rule_tests_pass_with_full_coverage():
    result = rtem("rules", "test")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "coverage: 11/11 guardrails" in result.stdout
    report = json.loads(rtem("rules", "test", "--json").stdout)
    assert report["ok"] and report["failed"] == 0 and report["coverage"]["percent"] == 100.0


TESTS = """\
version: 1
topology:
  entities: [{id: cart, type: service}, {id: cart-0, type: instance}, {id: web, type: service}]
  relations: [{source: cart-0, target: cart, type: instance_of}]
tests:
  - name: passes
    steps:
      - propose: {type: scale_out, target: cart, params: {replicas: 3}}
        expect: {outcome: allow, rules: []}
  - name: fails
    steps:
      - propose: {type: scale_out, target: cart, params: {replicas: 15}}
        expect: {outcome: deny, rules: [big-scale-out, deny-cart]}
"""
GUARDRAILS = """\
version: 1
rules:
  - id: big-scale-out
    match: {action: scale_out, params.replicas: {gt: 10}}
    outcome: require_approval
    reason: Big.
  - id: deny-cart
    match: {target: cart, action: rollback_deploy}
    outcome: deny
    reason: Cart rollbacks are manual.
  - id: page-web
    match: {action: notify_oncall, target: web}
    outcome: allow
    reason: Paging is fine.
"""


def test_a_failing_rule_test_shows_a_diff_and_coverage(tmp_path):
    root = rules_dir(tmp_path, {"g.yaml": GUARDRAILS, "g.test.yaml": TESTS})
    result = rtem("rules", "test", root)
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "✓ passes" in out and "✗ fails" in out
    assert "step 1 at 2024-01-01T00:00:00Z: scale_out on cart (" in out and "g.test.yaml:12)" in out
    assert "outcome   expected deny, got require_approval" in out
    assert "- deny-cart  expected, did not match" in out
    assert "reason    Big." in out
    assert "coverage: 1/3 guardrails fired in some step (33%)" in out
    assert "not exercised deny-cart" in out and "not exercised page-web" in out
    assert "FAIL 1/2 steps passed in 2 tests" in out
    report = json.loads(rtem("rules", "test", root, "--json").stdout)
    [failure] = report["failures"]
    assert failure["missing_rules"] == ["deny-cart"] and failure["unexpected_rules"] == []
    assert failure["expected"]["outcome"] == "deny" and failure["got"]["outcome"] == "require_approval"
    assert report["coverage"]["not_exercised"][0]["id"] == "deny-cart"


def test_coverage_can_gate_and_unknown_rule_ids_are_errors(tmp_path):
    passing = TESTS[:TESTS.index("  - name: fails")]
    root = rules_dir(tmp_path, {"g.yaml": GUARDRAILS, "g.test.yaml": passing})
    assert rtem("rules", "test", root).exit_code == 0
    result = rtem("rules", "test", root, "--fail-under", "50")
    assert result.exit_code == 1 and "coverage 0% is under --fail-under 50%" in result.stdout
    (root / "guardrails" / "g.test.yaml").write_text(passing.replace("rules: []", "rules: [big-scale-ot]"))
    result = rtem("rules", "test", root, "--json")
    assert result.exit_code == 1
    [error] = json.loads(result.stdout)["errors"]
    assert error["kind"] == "unknown_rule" and error["line"] == 9 and "big-scale-ot" in error["reason"]


def test_rule_test_sequences_count_allowed_steps(tmp_path):
    guardrails = ("version: 1\nrules:\n  - id: one-restart-per-10m\n    match: {action: restart_instance}\n"
                  "    limit: {max: 1, window: 10m}\n    outcome: deny\n    reason: r\n")
    tests = ("version: 1\ntopology: {entities: [{id: a, type: instance}]}\ntests:\n  - name: limit\n"
             "    start: 2024-03-20T12:00:00Z\n    steps:\n"
             "      - {at: 0s, propose: {type: restart_instance, target: a}, expect: allow}\n"
             "      - {at: 5m, propose: {type: restart_instance, target: a}, expect: deny}\n"
             "      - {at: 10m, propose: {type: restart_instance, target: a}, expect: allow}\n"
             "      - {at: 11m, propose: {type: restart_instance, target: a}, record: false, expect: deny}\n")
    root = rules_dir(tmp_path, {"g.yaml": guardrails, "g.test.yaml": tests})
    result = rtem("rules", "test", root)
    assert result.exit_code == 0, result.output


def test_check_validates_rule_test_files_too(tmp_path):
    root = rules_dir(tmp_path, {"g.yaml": GUARDRAILS, "g.test.yaml": TESTS.replace("propose:", "proposal:", 1)})
    assert ("rule_test", "g.test.yaml", *at(TESTS.replace("propose:", "proposal:", 1), 8, "proposal")) in findings(root)


# -- replay ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A real analysis: the recorded host fault, judged by the shipped rules, in an audit log."""
    out = tmp_path_factory.mktemp("analysis")
    result = rtem("analyze", EXAMPLES / "boutique-node-cpu.events.jsonl", "--topology",
                  EXAMPLES / "boutique-topology.json", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out / "run" / "rtem.db"


@pytest.mark.integration
def test_replay_with_unchanged_rules_changes_nothing(recorded):
    result = rtem("rules", "replay", "--since", "1h", "--db", recorded, "--topology",
                  EXAMPLES / "boutique-topology.json", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["records"] >= 2 and report["changed"] == [] and report["rules_changed"] == []


@pytest.mark.integration
def test_replay_finds_the_verdicts_an_edit_would_change(recorded, tmp_path):
    edited = (PACKAGED / "guardrails" / "default.yaml").read_text() + (
        "\n  - id: no-host-drains\n    match: {action: drain_host, incident_severity: error}\n    outcome: deny\n"
        "    reason: Hosts are drained by hand this quarter.\n")
    root = rules_dir(tmp_path, {"default.yaml": edited})
    args = ["rules", "replay", "--since", "1h", "--db", recorded, "--topology", EXAMPLES / "boutique-topology.json",
            "--rules", root]
    result = rtem(*args)
    assert result.exit_code == 0, result.output
    assert "drain_host on node-6: require_approval → deny" in result.stdout
    assert "now matches no-host-drains: Hosts are drained by hand this quarter." in result.stdout
    assert "1 verdict would change" in result.stdout
    report = json.loads(rtem(*args, "--json").stdout)
    [changed] = report["changed"]
    assert changed["added_rules"] == ["no-host-drains"] and changed["context"] == "record"
    assert changed["before"]["outcome"] == "require_approval" and changed["after"]["outcome"] == "deny"
    assert rtem(*args, "--fail-on-change").exit_code == 1


@pytest.mark.integration
def test_replay_refuses_a_rule_set_that_fails_check_and_bad_usage(recorded, tmp_path):
    root = rules_dir(tmp_path, {"g.yaml": "version: 1\nrules:\n  - id: a\n    match: {action: drain_hots}\n"
                                          "    outcome: deny\n    reason: r\n"})
    topology = EXAMPLES / "boutique-topology.json"
    result = rtem("rules", "replay", "--since", "1h", "--db", recorded, "--topology", topology, "--rules", root)
    assert result.exit_code == 1 and "unknown action type 'drain_hots'" in result.output
    assert rtem("rules", "replay", "--since", "yesterday-ish", "--db", recorded, "-t", topology).exit_code == 2
    assert rtem("rules", "replay", "--since", "1h", "--db", tmp_path / "none.db", "-t", topology).exit_code == 2


@pytest.mark.integration
def test_replay_judges_remedy_fitness_against_the_recorded_diagnosis(recorded, tmp_path):
    # The recorded incident's cause is host node-6 (cpu); a rule file that drains hosts only for disk
    # faults makes its drain unfit, judged against the diagnosis recorded with the verdict.
    edited = (PACKAGED / "guardrails" / "default.yaml").read_text().replace(
        "version: 1\n", "version: 1\nremedies:\n  drain_host:\n    faults: [disk_io, disk_space]\n", 1)
    root = rules_dir(tmp_path, {"default.yaml": edited})
    result = rtem("rules", "replay", "--since", "1h", "--db", recorded, "--topology",
                  EXAMPLES / "boutique-topology.json", "--rules", root, "--json")
    assert result.exit_code == 0, result.output
    [changed] = json.loads(result.stdout)["changed"]
    assert changed["proposal"]["type"] == "drain_host" and changed["after"]["outcome"] == "deny"
    assert changed["added_rules"] == ["fitness.drain_host.faults"]
    assert any("the diagnosis says cpu at node-6" in reason for reason in changed["after"]["reasons"])
