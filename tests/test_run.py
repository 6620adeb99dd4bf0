"""The live service against a real nats-server: detect, diagnose, guard, act once, verify, close."""

import hashlib

import pytest

from agent.identity import operator
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
        await wait_for(lambda: (incident(service) or {}).get("status") == "paused" and incident(service))
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
        # paging comes first: the page went out while the drain waits for a person
        statuses = {a["type"]: a["status"] for a in row["actions"]}
        assert statuses == {"drain_host": "awaiting_approval", "notify_oncall": "done"}, statuses
        assert [p["target"] for p in service.pages] == ["node-6"]
        runner = CliRunner()
        wrong = runner.invoke(app, ["approve", row["id"], "restart_instance", "--db", db])
        assert wrong.exit_code == 1 and "waiting for approval: #0 drain_host on node-6" in wrong.output
        done = runner.invoke(app, ["approve", row["id"][:8], "drain_host", "--by", "alice", "--reason", "host is sick",
                                   "--json", "--db", db])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"incident": row["id"], "actions": [0], "decision": "approve", "by": "alice"}
        [decided] = service.parts.audit.records(incident_id=row["id"], kind="approval.decided")
        assert decided.inputs["by"] == "alice" and decided.inputs["via"] == "cli" and decided.reasons == ["host is sick"]
        assert decided.inputs["operator"] == operator(), "who ran the command, beside the name given with --by"
        # one meaning of "approve": a colleague's later reject is refused, not written over the approval
        again = runner.invoke(app, ["reject", row["id"], "0", "--by", "bob", "--db", db])
        assert again.exit_code == 1 and "already decided: approve by alice" in again.output, again.output
        assert service.parts.ledger.decisions(row["id"])[0].by == "alice"
        await wait_for(lambda: any(a == "drain_host" for _, a, _ in target.applied))
        await wait_for(lambda: incident(service)["status"] == "verifying")
        shown = runner.invoke(app, ["incidents", "show", row["id"], "--db", db], terminal_width=200)
        assert shown.exit_code == 0 and "dry run" not in shown.output, shown.output
        assert "approval" in shown.output and "alice" in shown.output, shown.output
        shown = json.loads(runner.invoke(app, ["incidents", "show", row["id"], "--json", "--db", db]).stdout)
        [drained] = [a for a in shown["actions"] if a["type"] == "drain_host"]
        assert drained["status"] == "done" and drained["approval"]["by"] == "alice" and drained["executed"]
    finally:
        await service.stop()


async def test_an_incident_whose_thread_keeps_failing_is_retried_with_backoff_then_failed_and_paged(
        tmp_path, nats_server, bus, target, boutique):
    import sqlite3
    import time

    from bus import RetryPolicy

    retry = RetryPolicy(max_attempts=3, initial_interval_s=0.2, backoff=2.0, max_interval_s=1.0, jitter=0.0)
    service = await Service(settings(tmp_path, nats_server, diagnose_after_s=1000), boutique, poll_s=0.05,
                            failure_retry=retry).start()
    try:
        await publish(bus, [anomaly(f"f{i}", "cartservice-0", i) for i in range(10)])
        row = await wait_for(lambda: incident(service))
        # The store breaks under the incident: every pass of its thread raises.
        with sqlite3.connect(service.parts.store.path) as conn:
            conn.execute("ALTER TABLE events RENAME TO events_gone")
        started = time.monotonic()
        service.parts.store.set_status(row["id"], "diagnosing")  # as if its evidence window had passed
        await wait_for(lambda: service.driver._failures.get(row["id"]) == 1)
        assert not service.driver._ready(incident(service), 1e12), "a failed incident is not tried again before its backoff"
        # the service loop retries it after 0.2 s, then 0.4 s, then gives up
        await wait_for(lambda: incident(service)["status"] == "failed", 30)
        assert time.monotonic() - started >= 0.6
        [failed] = service.parts.audit.records(incident_id=row["id"], kind="incident.failed")
        assert "3 times in a row" in failed.reasons[0] and "events" in failed.reasons[0]
        # the page follows the record (best effort: rtem itself is failing)
        [paged] = await wait_for(lambda: service.parts.audit.records(incident_id=row["id"], kind="incident.paged"))
        assert paged.decision["paged"] is True
        assert any("rtem failed on incident" in p["params"]["summary"] for p in service.pages)
        assert row["id"] not in {r["id"] for r in service.parts.store.active_incidents()}, "the loop lets it be"
    finally:
        with sqlite3.connect(service.parts.store.path) as conn:
            conn.execute("ALTER TABLE events_gone RENAME TO events")
        await service.stop()
