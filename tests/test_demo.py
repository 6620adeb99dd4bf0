"""`rtem demo` end to end, shortened: one disruption at a high simulation speed."""

import pytest

from agent.demo.runner import run_demo

pytestmark = pytest.mark.integration


async def test_the_demo_remediates_an_injected_fault_and_reports_success(tmp_path):
    result = await run_demo(speed=40.0, scenarios=["partial-outage"], data_dir=tmp_path / "demo", live=False,
                            timeout_s=90)
    assert result.ok, result.reasons
    [incident] = result.incidents
    assert incident["status"] == "resolved" and incident["mttr_s"] > 0
    assert incident["root_causes"][0]["entity"] == "auth-1"
    assert [f["status"] for f in result.faults] == ["resolved"]
    assert result.applied and result.applied[0][1:] == ("restart_instance", "auth-1")
    report = (tmp_path / "demo" / "reports" / f"{incident['id']}.md").read_text()
    assert "restart_instance" in report and "auth-1" in report, "the report was written when the incident closed"


async def test_the_demo_asks_the_operator_before_a_high_risk_action(tmp_path):
    result = await run_demo(speed=40.0, scenarios=["db-connection-exhaustion"], data_dir=tmp_path / "demo",
                            live=False, timeout_s=90, approve_after_s=0.5)
    assert result.ok, result.reasons
    assert any(label.startswith("failover_database on orders-db") for label in result.approvals)
    kinds = [r["kind"] for r in result.audit]
    assert kinds.index("approval.requested") < kinds.index("action.approval") < kinds.index("action.executed")
