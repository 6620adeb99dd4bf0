"""`rtem demo` end to end, shortened: one disruption at a high simulation speed."""

from io import StringIO

import pytest
from rich.console import Console

from agent.demo.runner import run_demo

pytestmark = pytest.mark.integration


async def test_the_demo_remediates_an_injected_fault_and_reports_success(tmp_path):
    shown = StringIO()  # not a terminal: the progress comes as plain lines (tests/test_demo_live.py: a terminal)
    result = await run_demo(speed=40.0, scenarios=["partial-outage"], data_dir=tmp_path / "demo", live=True,
                            console=Console(file=shown, width=100), timeout_s=90)
    assert result.ok, result.reasons
    [incident] = result.incidents
    progress = shown.getvalue()
    assert f"{incident['id']} resolved · cause auth-1" in progress and "restart_instance auth-1: allowed → done" in progress
    assert "fault partial-outage on auth-1: resolved" in progress and "\x1b" not in progress
    assert incident["status"] == "resolved" and incident["mttr_s"] > 0
    assert incident["root_causes"][0]["entity"] == "auth-1"
    assert [f["status"] for f in result.faults] == ["resolved"]
    applied = [a[1:] for a in result.applied]
    assert applied[0] == ("notify_oncall", "auth-1"), "on-call is paged first"
    assert ("restart_instance", "auth-1") in applied
    report = (tmp_path / "demo" / "reports" / f"{incident['id']}.md").read_text()
    assert "restart_instance" in report and "auth-1" in report, "the report was written when the incident closed"


async def test_the_demo_asks_the_operator_before_a_high_risk_action(tmp_path):
    result = await run_demo(speed=40.0, scenarios=["db-connection-exhaustion"], data_dir=tmp_path / "demo",
                            live=False, timeout_s=90, approve_after_s=0.5)
    assert result.ok, result.reasons
    assert any(label.startswith("failover_database on orders-db") for label in result.approvals)
    kinds = [r["kind"] for r in result.audit]
    failover = [i for i, r in enumerate(result.audit)
                if r["kind"] == "action.executed" and "failover_database" in r["inputs"]["action"]]
    assert failover, kinds
    assert kinds.index("approval.requested") < kinds.index("action.approval") < failover[0]
