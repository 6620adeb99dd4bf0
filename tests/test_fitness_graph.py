"""Remedy fitness end to end: a model's proposal that does not remedy the diagnosed cause never reaches
the guard's plan; the deterministic remedy takes its place, and the decision record and the report say so.
Through `rtem analyze --llm openai` against a real scripted OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.cli import app
from tests.helpers import RECORDING, TOPOLOGY, decisions
from tests.llm_server import allowed_actions, good_diagnosis, task_of

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_a_restart_proposed_for_a_host_fault_is_replaced_by_the_drain_the_cause_calls_for(scripted_llm, tmp_path):
    llm = scripted_llm
    # The recording is a CPU fault on host node-6; frontend2-0 runs there (one relation away, so the
    # answer passes every check but fitness): restarting it does not remedy a host's fault.
    llm.on("diagnosis", lambda body: good_diagnosis(body, pick=0))
    llm.on("proposals", {"actions": [
        {"type": "restart_instance", "target": "frontend2-0", "params": {}, "reason": "restart it"},
        {"type": "notify_oncall", "target": "node-6", "params": {"summary": "Restarting frontend2-0."},
         "reason": "tell a person"}], "summary": "restart frontend2-0"})
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(RECORDING), "--topology", str(TOPOLOGY), "--json", "--out", str(out),
                                 "--llm", "openai"])
    assert result.exit_code == 0, result.output
    [incident] = json.loads(result.stdout)["incidents"]
    assert incident["root_causes"][0]["entity"] == "node-6"
    assert [(a["type"], a["target"]) for a in incident["actions"]] == [("drain_host", "node-6"),
                                                                        ("notify_oncall", "node-6")]

    # the model was offered only what fits: the host's drain, and a page anywhere in reach
    [asked] = [r for r in llm.requests if task_of(r) == "proposals"]
    offered = allowed_actions(asked)
    assert offered["drain_host"] == ["node-6"] and "restart_instance" not in offered and "scale_out" not in offered
    assert "REMEDIES THAT FIT the most likely root cause" in llm.user_prompt("proposals")
    assert "- drain_host: node-6" in llm.user_prompt("proposals")

    db = out / "run" / "rtem.db"
    [proposed] = decisions(db, "actions.proposed")
    [replaced, instead] = proposed["decision"]["replaced_as_unfit"]
    assert replaced.startswith("unfit proposal replaced: restart_instance on frontend2-0 (llm:scripted-model): "
                               "fitness.restart_instance.causes: does not remedy the diagnosed cause")
    assert instead.endswith("drain_host on node-6") and proposed["reasons"][:2] == [replaced, instead]
    by = {p["type"]: p["proposed_by"] for p in proposed["decision"]["proposals"]}
    assert by == {"drain_host": "deterministic", "notify_oncall": "llm:scripted-model"}
    page = next(p for p in proposed["decision"]["proposals"] if p["type"] == "notify_oncall")
    assert "planned: drain_host node-6" in page["params"]["summary"]
    verdicts = decisions(db, "action.verdict")
    assert [v["inputs"]["proposal"]["type"] for v in verdicts] == ["drain_host", "notify_oncall"]
    assert all(v["inputs"]["context"]["diagnosis"]["cause"] == "node-6" for v in verdicts)

    shown = runner.invoke(app, ["report", incident["id"], "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "Left out before the guard judged the plan" in shown.stdout
    assert "restart_instance on frontend2-0" in shown.stdout
