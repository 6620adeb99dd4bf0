"""The live service against a real nats-server: detect, diagnose, guard, act once, verify, close."""

import hashlib

import pytest

from agent.report import build_report
from agent.run import Service
from tests.live import Target, anomaly, publish, sample, settings, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def target(bus):
    obeying = Target()
    await obeying.attach(bus.nc)
    return obeying


def incident(service):
    rows = service.parts.store.incidents()
    return rows[0] if rows else None


async def test_a_fault_is_remediated_once_and_verified(tmp_path, nats_server, bus, target, boutique):
    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        await wait_for(lambda: target.applied)
        assert target.applied[0][1:] == ("restart_instance", "cartservice-0")
        assert target.headers[0]["Rtem-Idempotency-Key"] == target.applied[0][0]
        assert target.headers[0]["traceparent"].startswith("00-"), "the trace context travels with the command"
        await wait_for(lambda: (incident(service) or {}).get("status") == "verifying")
        # Time passes without new anomalies: the service sees recovery in event time.
        await publish(bus, [sample(f"s{i}", "cartservice-0", 20 + i * 10) for i in range(8)])
        row = await wait_for(lambda: incident(service)["status"] == "resolved" and incident(service))
        assert row["mttr_s"] > 0
        keys = [key for key, _, _ in target.applied]
        assert len(keys) == len(set(keys)), "every step applied once"
        assert [a for _, a, _ in target.applied] == ["restart_instance", "scale_out"]
        assert service.pages and service.pages[0]["target"] == "cartservice-0"
        from prometheus_client import REGISTRY
        assert REGISTRY.get_sample_value("rtem_actions_total", {"action": "restart_instance", "kind": "do",
                                                                "ok": "true"}) >= 1
        assert REGISTRY.get_sample_value("rtem_verdicts_total", {"outcome": "allow"}) >= 1
        kinds = [r.kind for r in service.parts.audit.records(incident_id=row["id"])]
        assert kinds.index("action.executed") < kinds.index("incident.closed")
        # The rationale report is written at close, and a rebuild later gives the same bytes.
        [written] = await wait_for(lambda: service.parts.audit.records(incident_id=row["id"], kind="report.written"))
        html = (tmp_path / "data" / "reports" / f"{row['id']}.html").read_text()
        assert written.decision["html"].endswith(f"{row['id']}.html") and "<svg" in html
        rebuilt = build_report(service.parts.store, service.parts.audit, row["id"])
        for fmt in ("md", "html"):
            assert hashlib.sha256(rebuilt.render(fmt).encode()).hexdigest() == written.decision[f"{fmt}_sha256"]
    finally:
        await service.stop()


async def test_a_failing_executor_opens_its_breaker_and_escalates(tmp_path, nats_server, bus, boutique):
    failing = Target(fail={"restart_instance"})
    await failing.attach(bus.nc)
    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") == "escalated" and incident(service))
        assert "failed" in row["resolution"]
        kinds = [r.kind for r in service.parts.audit.records(incident_id=row["id"])]
        assert "action.executed" in kinds
    finally:
        await service.stop()


async def test_the_kill_switch_stops_execution_but_not_diagnosis(tmp_path, nats_server, bus, target, boutique):
    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        service.parts.ledger.set_paused(True, "test")
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") == "paused" and incident(service))
        assert target.applied == []
        service.parts.ledger.set_paused(False, "test")
        await wait_for(lambda: target.applied)
    finally:
        await service.stop()


async def test_rtem_approve_decides_a_waiting_action_and_records_who(tmp_path, nats_server, bus, target, boutique):
    import json

    from typer.testing import CliRunner

    from agent.cli import app

    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    db = str(tmp_path / "data" / "rtem.db")
    try:
        await publish(bus, [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)])
        row = await wait_for(lambda: (incident(service) or {}).get("status") == "awaiting_approval" and incident(service))
        runner = CliRunner()
        wrong = runner.invoke(app, ["approve", row["id"], "restart_instance", "--db", db])
        assert wrong.exit_code == 1 and "those that do: 0 (drain_host on node-6)" in wrong.output
        done = runner.invoke(app, ["approve", row["id"][:8], "drain_host", "--by", "alice", "--reason", "host is sick",
                                   "--json", "--db", db])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"incident": row["id"], "actions": [0], "decision": "approve", "by": "alice"}
        [decided] = service.parts.audit.records(incident_id=row["id"], kind="approval.decided")
        assert decided.inputs["user"] == "alice" and decided.reasons == ["host is sick"]
        await wait_for(lambda: any(a == "drain_host" for _, a, _ in target.applied))
    finally:
        await service.stop()
