"""Hot reload: a good change is checked and swapped in atomically, a bad one refused; both audited."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.config import Settings
from agent.rules_reload import RulesInvalid, RulesReloader
from agent.service import build
from bus import parse_event
from rules import Proposal, Topology
from rules._check import packaged_rules_dir
from tests.live import anomaly

PACKAGED = packaged_rules_dir()
NOON = datetime(2024, 3, 20, 12, tzinfo=timezone.utc)
TOPOLOGY = Topology.from_dict({"entities": [{"id": "cart", "type": "service"}]})
DENY_BIG = ("\n  - id: deny-big-scale-out\n    match: {action: scale_out, params.replicas: {gt: 15}}\n"
            "    outcome: deny\n    reason: More than 15 replicas is never automatic.\n")
BROKEN = "\n  - id: broken\n    match: {action: scale_uot}\n    outcome: deny\n    reason: r\n"


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    root = tmp_path / "rules"
    for kind in ("guardrails", "contracts", "detect"):
        shutil.copytree(PACKAGED / kind, root / kind)
    return root


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "rtem.db")
    yield log
    log.close()


def edit(path: Path, text: str) -> None:
    path.write_text(text, "utf-8")
    stamp = path.stat().st_mtime_ns + 2_000_000_000  # a new mtime even on coarse file systems
    os.utime(path, ns=(stamp, stamp))


def scale_out(guard, replicas: int):
    return guard.evaluate(Proposal(type="scale_out", target="cart", params={"replicas": replicas}),
                          topology=TOPOLOGY, incident_entities=["cart"], incident_id="inc-1",
                          incident_severity="error", at=NOON)


def test_a_good_change_is_swapped_in_and_audited(rules_dir, audit):
    reloader = RulesReloader(rules_dir, audit=audit, actor="tester")
    before = reloader.current()
    assert scale_out(reloader.current().guard, 18).outcome == "require_approval"
    assert reloader.check_now().status == "unchanged"

    default = rules_dir / "guardrails" / "default.yaml"
    edit(default, default.read_text() + DENY_BIG)
    result = reloader.check_now()
    assert result.status == "loaded" and result.ok
    assert result.previous == before.digest and result.digest == reloader.current().digest != before.digest
    assert result.diff.added["guardrails"] == ["deny-big-scale-out"] and result.diff.removed["guardrails"] == []
    verdict = scale_out(reloader.current().guard, 18)
    assert verdict.outcome == "deny" and "deny-big-scale-out" in verdict.rules
    assert verdict.ruleset == reloader.current().guard.guardrails.digest
    assert scale_out(before.guard, 18).outcome == "require_approval"  # the old snapshot is untouched

    loads = audit.records(kind="rules.loaded")
    assert [r.inputs["via"] for r in loads] == ["start", "check_now"]
    assert loads[1].inputs["actor"] == "tester"
    assert loads[1].decision["digest"] == result.digest and loads[1].decision["previous"] == before.digest
    assert loads[1].decision["diff"]["added"]["guardrails"] == ["deny-big-scale-out"]
    assert [f["file"] for f in loads[1].inputs["files"]] == ["guardrails/default.yaml"]
    assert "guardrails added: deny-big-scale-out" in loads[1].reasons[0]
    assert audit.verify().ok


def test_a_bad_change_is_refused_and_the_previous_rules_stay(rules_dir, audit, caplog):
    reloader = RulesReloader(rules_dir, audit=audit)
    active = reloader.current()
    default = rules_dir / "guardrails" / "default.yaml"
    good = default.read_text()
    edit(default, good + BROKEN)
    with caplog.at_level("ERROR", logger="rtem.rules"):
        result = reloader.check_now()
    assert result.status == "refused" and not result.ok
    assert result.digest == active.digest and reloader.current() is active
    [error] = result.errors
    assert error.kind == "unknown_action" and error.line == good.count("\n") + 3
    assert "unknown action type 'scale_uot'" in caplog.text
    [refused] = audit.records(kind="rules.refused")
    assert "scale_uot" in refused.reasons[0] and refused.decision["active"] == active.digest
    assert reloader.check_now().status == "unchanged"  # the same bad files are not judged (or audited) again
    assert len(audit.records(kind="rules.refused")) == 1

    edit(default, good + DENY_BIG)
    assert reloader.check_now().status == "loaded"
    assert scale_out(reloader.current().guard, 18).outcome == "deny"


def test_invalid_rules_at_start_refuse_to_start(rules_dir):
    (rules_dir / "guardrails" / "default.yaml").write_text(
        (rules_dir / "guardrails" / "default.yaml").read_text() + BROKEN)
    with pytest.raises(RulesInvalid) as caught:
        RulesReloader(rules_dir)
    assert "scale_uot" in str(caught.value) and caught.value.findings


def test_the_diff_at_start_is_against_the_last_load_on_record(rules_dir, audit):
    RulesReloader(rules_dir, audit=audit)
    default = rules_dir / "guardrails" / "default.yaml"
    edit(default, default.read_text().replace("params.replicas: {gt: 10}", "params.replicas: {gt: 12}") + DENY_BIG)
    RulesReloader(rules_dir, audit=audit)  # a restart after an offline edit
    first, second = audit.records(kind="rules.loaded")
    assert first.decision["diff"] is None and "first load on record" in first.reasons[0]
    assert second.decision["diff"]["added"]["guardrails"] == ["deny-big-scale-out"]
    assert second.decision["diff"]["changed"]["guardrails"] == ["large-scale-out-needs-approval"]


async def test_built_with_hot_reload_the_graph_and_triage_read_the_rules_in_force(rules_dir, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", rules_dir=rules_dir)
    parts = build(settings, TOPOLOGY, hot_reload=True)
    try:
        reloader = parts.rules
        assert isinstance(reloader, RulesReloader)
        assert reloader.current().guard.history is not None  # the SQLite history build() gave the guard
        parts.triage.handle([parse_event(json.dumps(anomaly("e1", "cart", 30)))])
        detector = parts.triage.detector
        assert detector.watermark > 0
        detect = rules_dir / "detect" / "default.yaml"
        extra = "\n  - id: any-critical-log\n    match: {type: rtem.log, severity: critical}\n"
        edit(detect, detect.read_text() + extra)
        result = reloader.check_now()
        assert result.status == "loaded" and result.diff.added["detections"] == ["any-critical-log"]
        versions = parts.graph.deps.versions()
        assert versions["detections"] == reloader.current().detections.digest
        assert versions["rules"] == reloader.current().digest
        assert parts.triage.detector is detector, "triage changes its detector itself, between two batches"
        parts.triage.handle([])
        assert parts.triage.detector is not detector and "any-critical-log" in parts.triage.detector.by_id
        assert parts.triage.detector.watermark == detector.watermark, "the window state carries over"
    finally:
        await parts.close()


async def test_watch_picks_up_a_change_once_the_files_stand_still(rules_dir, audit):
    reloader = RulesReloader(rules_dir, audit=audit)
    seen = []
    reloader.subscribe(lambda snapshot, result: seen.append(result))
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(0.02, stop))
    default = rules_dir / "guardrails" / "default.yaml"
    edit(default, default.read_text() + DENY_BIG)
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [r.status for r in seen] == ["loaded"]
    assert [r.inputs["via"] for r in audit.records(kind="rules.loaded")] == ["start", "watch"]


def test_replaced_rule_sets_are_freed_after_their_grace_period(rules_dir, audit):
    from rules._engine import live_rulesets

    reloader = RulesReloader(rules_dir, audit=audit, actor="tester", grace_s=0)
    guardrails = rules_dir / "guardrails" / "default.yaml"
    original = guardrails.read_text("utf-8")
    edit(guardrails, original + DENY_BIG)
    assert reloader.check_now().status == "loaded"
    replaced = reloader.current()
    held = live_rulesets()
    for i in range(5):  # loads and refusals alike leave no rule set behind
        edit(guardrails, original + (DENY_BIG if i % 2 else BROKEN) + f"# edit {i}\n")
        assert reloader.check_now().status == ("loaded" if i % 2 else "refused")
        assert live_rulesets() <= held, f"edit {i}: {live_rulesets()} rule sets held, {held} before"
    assert scale_out(reloader.current().guard, 18).outcome == "deny", "the rules in force still judge"
    with pytest.raises(RuntimeError, match="replaced by a reload"):
        scale_out(replaced.guard, 18)


def test_a_replaced_rule_set_stays_usable_during_its_grace_period(rules_dir, audit):
    reloader = RulesReloader(rules_dir, audit=audit, actor="tester")  # 60 s grace
    before = reloader.current()
    edit(rules_dir / "guardrails" / "default.yaml",
         (rules_dir / "guardrails" / "default.yaml").read_text("utf-8") + DENY_BIG)
    assert reloader.check_now().status == "loaded"
    assert scale_out(before.guard, 18).outcome == "require_approval", "an evaluation already under way finishes"


def test_durable_rules_runs_no_threads_of_its_own():
    """durable-rules' own host walks its rulesets from two chains of timer threads (a new thread per
    ruleset every round, a round every 0.2 s) to run its timers and queued actions. rtem uses neither:
    those threads only took the GIL from the hot path, and freeing a ruleset under their walk once crashed
    them. The host rtem installs starts none, and freeing rule sets leaves the others working."""
    import threading
    import time

    from rules._engine import CompiledRuleset

    sets = [CompiledRuleset({f"r{i}": {"type": "x"}}, name="quiet") for i in range(3)]
    assert sets[-1].match({"type": "x"}) == ["r2"]
    time.sleep(0.3)  # durable-rules' own host dispatches first after 0.1 s, then every 0.2 s
    dispatchers = [t for t in threading.enumerate()
                   if isinstance(t, threading.Timer) and getattr(t.function, "__module__", "") == "durable.engine"]
    assert dispatchers == []
    for rules in sets[:2]:
        rules.close()
    assert sets[2].match({"type": "x"}) == ["r2"]
    assert CompiledRuleset({"again": {"type": "x"}}, name="quiet").match({"type": "x"}) == ["again"]
