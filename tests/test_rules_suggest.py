"""`rtem rules suggest`: guardrail changes from repeated human decisions, as checked diffs with evidence."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.models import DecisionRecord
from agent.rules_suggest import Change, TargetKind, suggest
from agent.rules_text import append_rule, check_texts, narrow
from rules import Guard, Proposal, Ruleset, Topology, check_contracts, check_rules, packaged_rules_dir, parse_guardrails
from rules._files import read_fast

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
PACKAGED = packaged_rules_dir()
DEFAULT = "guardrails/default.yaml"
TOPOLOGY = {
    "entities": [{"id": "checkout", "type": "service", "tier": 1}, {"id": "cart", "type": "service", "tier": 2},
                 *({"id": f"checkout-{i}", "type": "instance"} for i in range(4)),
                 *({"id": f"cart-{i}", "type": "instance"} for i in range(4))],
    "relations": [*({"source": f"checkout-{i}", "target": "checkout", "type": "instance_of"} for i in range(4)),
                  *({"source": f"cart-{i}", "target": "cart", "type": "instance_of"} for i in range(4))],
}
runner = CliRunner()


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology.from_dict(TOPOLOGY)


@pytest.fixture(scope="module")
def contracts():
    return check_contracts(None)[0]


def files() -> dict[str, str]:
    return {DEFAULT: (PACKAGED / DEFAULT).read_text("utf-8")}


class Log:
    """Records shaped as the graph's guard node and agent.approvals.decide write them."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def add(self, kind: str, incident: str, inputs: dict, decision: dict, at: datetime) -> int:
        seq = len(self.records) + 1
        self.records.append(DecisionRecord(seq=seq, at=at, incident_id=incident, kind=kind, inputs=inputs,
                                           decision=decision, prev_hash="0" * 64, hash=f"{seq:064x}"))
        return seq

    def held_and_decided(self, n: int, action: str, targets: list[str], approve: bool | list[bool],
                         rules: tuple[str, ...] = ("tier1-needs-approval",), by: str = "alice") -> list[int]:
        """n proposals held by `rules`, each then approved or rejected; returns the decisions' seqs."""
        seqs = []
        for i in range(n):
            at = T0 + timedelta(hours=len(self.records))
            incident, target = f"inc-{len(self.records)}", targets[i % len(targets)]
            self.add("action.verdict", incident, {"proposal": {"type": action, "target": target, "params": {}}},
                     {"outcome": "require_approval", "rules": list(rules), "approver_role": "approver"}, at)
            yes = approve[i] if isinstance(approve, list) else approve
            seqs.append(self.add("approval.decided", incident,
                                 {"by": by, "via": "cli", "role": None,
                                  "action": {"index": 0, "type": action, "target": target}},
                                 {"decision": "approve" if yes else "reject", "by": by}, at + timedelta(minutes=5)))
        return seqs


def guard_of(texts: dict[str, str], contracts, tmp_path: Path) -> Guard:
    path = tmp_path / "patched.yaml"
    path.write_text(texts[DEFAULT], "utf-8")
    return Guard(Ruleset(rules=tuple(parse_guardrails(read_fast(path))), digest="t"), contracts)


def judge(guard: Guard, topology: Topology, action: str, target: str, **params) -> str:
    return guard.evaluate(Proposal(type=action, target=target, params=params), topology=topology, incident_entities=[target],
                          incident_id="inc-x", incident_severity="error", at=T0).outcome


# -- the pure function ----------------------------------------------------------------------------

def test_approved_five_times_suggests_narrowing_the_rule_that_held_it(topology, contracts, tmp_path):
    log = Log()
    seqs = log.held_and_decided(5, "restart_instance", ["checkout-0", "checkout-1", "checkout-2"], True)
    report = suggest(log.records, topology, files(), contracts, now=T0)
    [item] = report.suggestions
    assert item.change == Change.ALLOW and item.rules == ["tier1-needs-approval"] and item.files == [DEFAULT]
    assert [d.seq for d in item.evidence] == seqs and item.deciders == ["alice"]
    assert item.counts == {"approved": 5, "rejected": 0, "expired": 0}
    assert "alice approved restart_instance on instances of checkout 5 times" in item.why
    assert item.diff.startswith(f"--- a/{DEFAULT}\n+++ b/{DEFAULT}\n")
    assert "+      - target_service: {ne: checkout}" in item.diff and "audit seqs 2, 4, 6, 8, 10" in item.diff
    # the narrowed rule still holds every other tier-1 change, and lets exactly this one through
    after = _apply(item.diff, files())
    assert check_texts(after, contracts, T0) == []
    before_guard, after_guard = guard_of(files(), contracts, tmp_path), guard_of(after, contracts, tmp_path)
    assert judge(before_guard, topology, "restart_instance", "checkout-3") == "require_approval"
    assert judge(after_guard, topology, "restart_instance", "checkout-3") == "allow"
    assert judge(after_guard, topology, "rollback_deploy", "checkout") == "require_approval"
    again = suggest(log.records, topology, after, contracts, now=T0)  # once applied, it is not suggested again
    assert again.suggestions == [] and again.notes == [
        "restart_instance on instances of checkout: tier1-needs-approval already leaves it out"]


def test_two_suggestions_on_one_rule_combine_into_one_patch(topology, contracts, tmp_path):
    log = Log()
    log.held_and_decided(5, "restart_instance", ["checkout-0", "checkout-1"], True)
    log.held_and_decided(5, "rollback_deploy", ["checkout"], True, by="bob")
    report = suggest(log.records, topology, files(), contracts, now=T0)
    assert [s.kind.describe() for s in report.suggestions] == ["restart_instance on instances of checkout",
                                                               "rollback_deploy on checkout"]
    guard = guard_of(_apply(report.combined, files()), contracts, tmp_path)
    assert judge(guard, topology, "restart_instance", "checkout-1") == "allow"
    assert judge(guard, topology, "rollback_deploy", "checkout") == "allow"
    assert judge(guard, topology, "scale_out", "checkout", replicas=3) == "require_approval"


def test_rejected_five_times_suggests_a_deny_rule(topology, contracts, tmp_path):
    log = Log()
    seqs = log.held_and_decided(5, "rollback_deploy", ["checkout"], False, by="bob")
    [item] = suggest(log.records, topology, files(), contracts, now=T0).suggestions
    assert item.change == Change.DENY and item.rules == ["suggested-deny-rollback_deploy-checkout-service"]
    assert [d.seq for d in item.evidence] == seqs and "bob rejected rollback_deploy on checkout 5 times" in item.why
    after = _apply(item.diff, files())
    assert check_texts(after, contracts, T0) == []
    guard = guard_of(after, contracts, tmp_path)
    assert judge(guard, topology, "rollback_deploy", "checkout") == "deny"
    assert judge(guard, topology, "restart_instance", "checkout-0") == "require_approval"
    again = suggest(log.records, topology, after, contracts, now=T0)
    assert again.suggestions == [] and "suggested-deny-rollback_deploy-checkout-service already denies it" in again.notes[0]


def test_mixed_decisions_too_few_and_since_suggest_nothing(topology, contracts):
    log = Log()
    log.held_and_decided(6, "restart_instance", ["checkout-0"], [True, True, False, True, True, True])
    report = suggest(log.records, topology, files(), contracts, now=T0)
    assert report.suggestions == [] and "5 approved and 1 rejected" in report.notes[0]

    log = Log()
    log.held_and_decided(5, "restart_instance", ["checkout-0"], True)
    assert suggest(log.records, topology, files(), contracts, now=T0, minimum=6).suggestions == []
    since = log.records[3].at  # drops the first two approvals: three are left
    assert suggest(log.records, topology, files(), contracts, now=T0, since=since).suggestions == []
    assert len(suggest(log.records, topology, files(), contracts, now=T0, minimum=3, since=since).suggestions) == 1


def test_kinds_are_kept_apart_and_expiries_do_not_count_as_decisions(topology, contracts):
    log = Log()
    log.held_and_decided(3, "restart_instance", ["checkout-0"], True)
    log.held_and_decided(3, "restart_instance", ["cart-0"], True)  # another service: another kind
    log.add("action.approval", "inc-9", {"action": "#0 restart_instance on checkout-1"},
            {"status": "expired", "by": "rtem"}, T0)
    assert suggest(log.records, topology, files(), contracts, now=T0).suggestions == []
    log.held_and_decided(2, "restart_instance", ["checkout-2"], True)
    [item] = suggest(log.records, topology, files(), contracts, now=T0).suggestions
    assert item.counts == {"approved": 5, "rejected": 0, "expired": 1} and "1 more expired" in item.why


def test_what_a_guardrail_cannot_change_or_check_refuses_is_not_suggested(topology, contracts, tmp_path):
    log = Log()
    log.held_and_decided(5, "failover_database", ["checkout"], True, rules=("contract.approval",))
    report = suggest(log.records, topology, files(), contracts, now=T0)
    assert report.suggestions == [] and "contract of failover_database itself asks for approval" in report.notes[0]

    # an action type whose contract is gone since: a rule naming it fails `rules check` (unknown_action)
    log = Log()
    log.held_and_decided(5, "purge_cache", ["checkout"], False)
    report = suggest(log.records, topology, files(), contracts, now=T0)
    assert report.suggestions == [] and "would not pass `rtem rules check`" in report.notes[0]
    assert "unknown action type 'purge_cache'" in report.notes[0]


def _apply(diff: str, texts: dict[str, str]) -> dict[str, str]:
    """Apply a unified diff to in-memory texts (hunks in order, context checked)."""
    result = dict(texts)
    for block in diff.split("--- a/")[1:]:
        name = block.split("\n", 1)[0]
        lines = result[name].splitlines(keepends=True)
        out, at = [], 0
        for hunk in block.split("\n@@ ")[1:]:
            header, *body = hunk.split("\n")
            start = int(header.split(" ")[0].split(",")[0].lstrip("-")) - 1
            out += lines[at:start]
            at = start
            for row in body:
                if row == "":  # what splitting on newlines leaves at the end of a hunk
                    continue
                if row.startswith(" "):
                    assert lines[at].rstrip("\n") == row[1:], (lines[at], row)
                    out.append(lines[at])
                    at += 1
                elif row.startswith("-"):
                    assert lines[at].rstrip("\n") == row[1:]
                    at += 1
                elif row.startswith("+"):
                    out.append(row[1:] + "\n")
        result[name] = "".join(out + lines[at:])
    return result


# -- the command, over a real audit log --------------------------------------------------------------

@pytest.fixture
def recorded(tmp_path, contracts, topology) -> tuple[Path, Path, Path, list[int]]:
    """A rules directory, a topology file and an audit log whose verdicts the shipped rules really gave,
    each answered by a person in the shape `agent.approvals.decide` records."""
    root = tmp_path / "rules"
    (root / "guardrails").mkdir(parents=True)
    shutil.copy(PACKAGED / DEFAULT, root / DEFAULT)
    shutil.copy(PACKAGED / "guardrails" / "default.test.yaml", root / "guardrails" / "default.test.yaml")
    shutil.copytree(PACKAGED / "contracts", root / "contracts")
    topo_file = tmp_path / "topology.json"
    topo_file.write_text(json.dumps(TOPOLOGY), "utf-8")
    guard = check_rules(root).guard
    db = tmp_path / "rtem.db"
    seqs = []
    with AuditLog(db) as audit:
        for i in range(5):
            incident, target, at = f"inc-{i}", f"checkout-{i % 4}", T0 + timedelta(hours=i)
            proposal = Proposal(type="restart_instance", target=target)
            verdict = guard.evaluate(proposal, topology=topology, incident_entities=[target], incident_id=incident,
                                     incident_severity="error", at=at)
            assert verdict.outcome == "require_approval"
            audit.append("action.verdict", incident_id=incident, node="guard",
                         inputs={"proposal": proposal.model_dump(),
                                 "context": {"incident_entities": [target], "incident_severity": "error",
                                             "at": at.isoformat(), "history_seq": None}},
                         decision={"outcome": verdict.outcome, "rules": verdict.rules,
                                   "approver_role": verdict.approver_role},
                         reasons=verdict.reasons, versions={"ruleset": verdict.ruleset})
            record = audit.append("approval.decided", incident_id=incident, node="cli",
                                  inputs={"by": "alice", "via": "cli", "role": None, "operator": "alice@host",
                                          "action": {"index": 0, "type": "restart_instance", "target": target}},
                                  decision={"decision": "approve", "by": "alice"}, reasons=["looks safe"])
            seqs.append(record.seq)
    return root, topo_file, db, seqs


def rtem(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_the_command_prints_the_diff_and_its_evidence(recorded):
    root, topo_file, db, seqs = recorded
    args = ["rules", "suggest", "--db", db, "--rules-dir", root, "--topology", topo_file]
    result = rtem(*args)
    assert result.exit_code == 0, result.output
    assert "allow without approval: restart_instance on instances of checkout" in result.stdout
    assert "+      - target_service: {ne: checkout}" in result.stdout
    assert all(f"seq {s} " in result.stdout for s in seqs) and "decided by alice" in result.stdout
    report = json.loads(rtem(*args, "--json").stdout)
    [item] = report["suggestions"]
    assert [e["seq"] for e in item["evidence"]] == seqs and item["rules"] == ["tier1-needs-approval"]
    nothing = rtem(*args, "--min", "6")
    assert nothing.exit_code == 0 and "nothing to suggest from 5 decisions" in nothing.stdout
    by_target = rtem("rules", "suggest", "--db", db, "--rules-dir", root)  # no topology: 2, 1, 1, 1 per instance
    assert by_target.exit_code == 0 and "nothing to suggest from 5 decisions" in by_target.stdout
    assert rtem(*args, "--since", "soon-ish").exit_code == 2
    assert rtem("rules", "suggest", "--db", db.parent / "none.db", "--rules-dir", root).exit_code == 2


@pytest.mark.integration  # runs `patch`
@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the `patch` program to apply the diff")
def test_the_patch_applies_passes_check_and_replay_shows_the_changed_verdicts(recorded, tmp_path):
    root, topo_file, db, seqs = recorded
    patch_file = tmp_path / "suggest.patch"
    result = rtem("rules", "suggest", "--db", db, "--rules-dir", root, "--topology", topo_file, "--out", patch_file)
    assert result.exit_code == 0 and patch_file.is_file(), result.output
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    applied = subprocess.run(["patch", "-p1", "-d", str(copy), "-i", str(patch_file)], capture_output=True, text=True,
                             check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert rtem("rules", "check", copy).exit_code == 0
    assert rtem("rules", "test", copy).exit_code == 0
    replay = rtem("rules", "replay", "--since", "1h", "--db", db, "--rules", copy, "--topology", topo_file, "--json")
    assert replay.exit_code == 0, replay.output
    changed = json.loads(replay.stdout)["changed"]
    assert len(changed) == 5 and {c["before"]["outcome"] for c in changed} == {"require_approval"}
    assert {c["after"]["outcome"] for c in changed} == {"allow"}
    assert all(c["removed_rules"] == ["tier1-needs-approval"] for c in changed)
    assert sorted(c["seq"] for c in changed) == [seq - 1 for seq in seqs], "the verdicts the approvals answered"
    assert (root / DEFAULT).read_text() == (PACKAGED / DEFAULT).read_text(), "suggest never changes the rules"


def test_narrowing_keeps_the_rest_of_the_file_as_written():
    text = ("version: 1\nrules:\n"
            "  - match: {action: scale_out}   # first key, flow style, a comment\n    id: a\n    outcome: deny\n"
            "    reason: r\n"
            "  - id: b\n    outcome: require_approval\n    reason: >\n      folded\n      reason\n"
            "  - id: c\n    match:\n      any:\n        - {risk: high}\n        - {action: drain_host}\n"
            "    outcome: require_approval\n    reason: r  # kept\n")
    kind = TargetKind("restart_instance", target="orders-db")
    first = narrow(text, 0, kind.exclusion, "note a")
    assert "  # note a\n  - match:\n      action: scale_out\n" in first and "   # first key, flow style, a comment" in first
    assert yaml.safe_load(first)["rules"][0]["match"] == {"action": "scale_out", "any": kind.exclusion()}
    second = narrow(first, 1, kind.exclusion, "note b")  # no match at all: every proposal, until now
    third = narrow(second, 2, kind.exclusion, "note c")  # has `any`: the exclusion goes beside it
    rules = yaml.safe_load(third)["rules"]
    assert rules[1]["match"] == {"any": kind.exclusion()} and rules[1]["reason"] == "folded reason\n"
    assert rules[2]["match"] == {"any": [{"risk": "high"}, {"action": "drain_host"}], "all": [{"any": kind.exclusion()}]}
    assert third.endswith("    reason: r  # kept\n") and third.count("# note") == 3
    added = append_rule(third, {"id": "d", "match": {"action": "scale_out"}, "outcome": "deny", "reason": "r"})
    assert added.startswith(third.rstrip("\n")) and yaml.safe_load(added)["rules"][-1]["id"] == "d"
