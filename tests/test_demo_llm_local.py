"""`rtem demo --llm local` on two scenarios, with the real local model (SmolLM2-135M through llama.cpp):
every incident resolves within the demo's default timeout, whatever the model answers or how slowly,
and no action that does not remedy the diagnosed cause runs (issue 17). Skipped, with the reason,
without the [local] extra; CI installs it (the README's test command)."""

from __future__ import annotations

import pytest

from agent.config import Settings
from agent.demo.runner import run_demo
from tests.helpers import local_model_or_skip

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.local_llm]

DEFAULT_TIMEOUT_S = 170.0  # run_demo's and `rtem demo`'s default


@pytest.mark.timeout(420)
async def test_the_demo_with_the_local_model_resolves_every_incident_on_time(tmp_path, monkeypatch):
    local_model_or_skip()
    monkeypatch.delenv("RTEM_LOCAL_MODEL", raising=False)
    monkeypatch.delenv("RTEM_LLM_DEADLINE_S", raising=False)
    # Where the model once drained a host for an instance's crash loop, and called the database's
    # exhausted connections a CPU fault (they run together in the demo's first wave).
    result = await run_demo(scenarios=["partial-outage", "db-connection-exhaustion"], data_dir=tmp_path / "demo", live=False,
                            settings=Settings(llm="local"), timeout_s=DEFAULT_TIMEOUT_S)
    assert result.ok, result.reasons
    assert [f["status"] for f in result.faults] == ["resolved", "resolved"]
    assert all(i["status"] == "resolved" for i in result.incidents) and len(result.incidents) == 2

    ranked = [r for r in result.audit if r["kind"] == "causes.ranked"]
    runs = [r["decision"]["reasoner"] for r in ranked]
    # the model was asked each time: it decided, or the deadline passed and the deterministic answer stood
    assert all(run["reasoner"] == "llm" or (run["fallback"] or "").startswith(("deadline:", "the answer was still"))
               for run in runs), runs
    assert all(run["llm_seconds"] <= Settings().llm_deadline_s + 0.5 for run in runs), runs

    executed = [r["inputs"]["action"] for r in result.audit if r["kind"] == "action.executed"]
    assert any("restart_instance on auth-1" in a for a in executed), executed
    assert any("failover_database on orders-db" in a for a in executed), executed
    verdicts = [r for r in result.audit if r["kind"] == "action.verdict"]
    allowed = [v for v in verdicts if v["decision"]["outcome"] != "deny"]
    assert not any(rule.startswith("fitness.") for v in allowed for rule in v["decision"]["rules"])
    # no host was drained: neither fault is a host's
    assert not any(v["inputs"]["proposal"]["type"] == "drain_host" for v in allowed)
