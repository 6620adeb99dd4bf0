"""On-call actions through a live `rtem run` (embedded NATS, SQLite, uvicorn) over real HTTP and the
CLI: acknowledge, assign, comment, resolve, reopen, each a decision record; roles and scopes; a person's
resolve stops the incident's thread from acting; a reopen is taken up anew; the Escalator's paging
stops at an acknowledgement."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.escalation import Escalator, FixedPolicy
from rules import load_escalation
from tests.live import api_client, drain_action, serving_with_a_cpu_incident

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
routes:
  - id: hosts
    match: {services: [node-6]}
    repeat_every: 5m
    levels: [{receivers: [webhook, "rotation:infra"]}]
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    service = serving_with_a_cpu_incident(tmp_path_factory.mktemp("oncall") / "data", boutique, {
        "operator": ("operator-1", "operator", ()), "viewer": ("viewer-1", "viewer", ()),
        "rule_author": ("rule_author-1", "rule_author", ()), "scoped": ("dave", "operator", ("cartservice",))})
    yield service
    service.stop()


def records(live, kind: str):
    with AuditLog(live.db) as audit:
        return audit.records(incident_id=live.incident["id"], kind=kind)


def cli(live, *args: str):
    result = CliRunner().invoke(app, ["incidents", *args, "--db", str(live.db), "--json"])
    return result.exit_code, result.stdout


def test_roles_and_scopes_guard_every_on_call_action(live):
    inc = live.incident["id"]
    bodies = {"ack": {}, "assign": {"to": "bob"}, "comment": {"text": "x"}, "resolve": {"reason": "x"},
              "reopen": {"reason": "x"}}
    with api_client(live, "viewer") as viewer, api_client(live, "rule_author") as author, \
            api_client(live, "scoped") as scoped, api_client(live) as anonymous:
        for verb, body in bodies.items():
            path = f"/api/v1/incidents/{inc}/{verb}"
            assert anonymous.post(path, json=body).status_code == 401
            assert viewer.post(path, json=body).status_code == 403, verb
            assert author.post(path, json=body).status_code == 403, verb
            hidden = scoped.post(path, json=body)
            absent = scoped.post(f"/api/v1/incidents/inc-nope/{verb}", json=body)
            assert hidden.status_code == absent.status_code == 404, (verb, hidden.text)
            assert hidden.json()["error"] == f"no incident {inc!r}"  # exactly as if it did not exist
    assert records(live, "incident.acknowledged") == []
    with AuditLog(live.db) as audit:
        denied = audit.records(kind="access.denied")[-1]
    assert denied.inputs["token"] == "dave" and denied.decision["status"] == 404


async def _tick(escalator):
    return await escalator.tick()


def test_ack_assign_comment_over_http_and_the_cli_and_paging_stops_at_the_acknowledgement(live, tmp_path):
    inc = live.incident["id"]
    (tmp_path / "escalation.yaml").write_text(POLICY)
    sent = []

    async def send(incident_id, level, receivers, summary):
        sent.append((incident_id, level, receivers))

    clock = {"now": datetime.now(timezone.utc)}
    parts = live.service.parts
    escalator = Escalator(FixedPolicy(load_escalation(tmp_path / "escalation.yaml")), parts.store, parts.audit, send,
                          lambda: clock["now"], topology=live.service.topology)
    live.call(_tick(escalator))
    assert sent == [(inc, 0, ("webhook", "rotation:infra"))]
    with api_client(live, "operator") as http:
        acked = http.post(f"/api/v1/incidents/{inc}/ack")
        assert acked.status_code == 200, acked.text
        assert acked.json()["oncall"]["acknowledged_by"] == "operator-1"
        again = http.post(f"/api/v1/incidents/{inc}/ack")
        assert again.status_code == 409 and "already acknowledged by operator-1" in again.json()["error"]
        assert http.post(f"/api/v1/incidents/{inc}/assign", json={"to": "bob"}).status_code == 200
        assert http.post(f"/api/v1/incidents/{inc}/comment", json={"text": ""}).status_code == 422
        broken = http.post(f"/api/v1/incidents/{inc}/comment", content=b"{nope",
                           headers={"content-type": "application/json"})
        assert broken.status_code in (400, 422) and broken.json()["error"]  # JSON, never a 500
        code, out = cli(live, "comment", inc, "bob is on it")
        assert code == 0, out
        detail = http.get(f"/api/v1/incidents/{inc}").json()["oncall"]
    assert detail["assignee"] == "bob" and [c["text"] for c in detail["comments"]] == ["bob is on it"]
    clock["now"] += timedelta(minutes=30)
    assert live.call(_tick(escalator)) == [] and len(sent) == 1  # acknowledged: no re-page
    assert records(live, "incident.assigned")[0].inputs["to"] == "bob"
    commented = records(live, "incident.commented")[0]
    assert commented.inputs["via"] == "cli" and "@" in commented.inputs["by"]  # user@host
    code, shown = cli(live, "show", inc)
    assert code == 0 and json.loads(shown)["oncall"]["acknowledged_by"] == "operator-1"


def test_a_persons_resolve_stops_the_plan_and_a_reopen_is_taken_up_anew(live):
    inc = live.incident["id"]
    action = drain_action(live)
    with api_client(live, "operator") as http:
        assert http.post(f"/api/v1/incidents/{inc}/resolve", json={}).status_code == 422  # a reason is required
        resolved = http.post(f"/api/v1/incidents/{inc}/resolve", json={"reason": "host replaced by hand"})
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["status"] == "resolved"
    with api_client(live, "operator") as http:
        row = http.get(f"/api/v1/incidents/{inc}").json()
    assert row["status"] == "resolved" and row["resolution"] == "resolved by operator-1: host replaced by hand"
    assert next(a for a in row["actions"] if a["index"] == action["index"])["status"] == "skipped"
    code, out = cli(live, "ack", inc)
    assert code == 1  # closed: nothing to acknowledge
    # The pending approval can no longer be given, and the service does not run the action.
    code, out = CliRunner().invoke(app, ["approve", inc, str(action["index"]), "--db", str(live.db)]).exit_code, None
    assert code == 1
    time.sleep(1.0)  # several of the service's polls
    assert all(a != "drain_host" for _, a, _ in live.target.applied)
    assert live.service.parts.store.incident(inc)["status"] == "resolved"
    assert records(live, "incident.resolved")[0].inputs["reason"] == "host replaced by hand"

    code, out = cli(live, "reopen", inc, "--reason", "the host is hot again")
    assert code == 0, out
    assert json.loads(out)["status"] == "open" and json.loads(out)["oncall"]["round"] == 1
    # rtem takes it up anew: its thread diagnoses it again and asks for approval again.
    live.wait(lambda: live.service.parts.store.incident(inc)["status"] == "awaiting_approval", timeout=20)
    assert records(live, "incident.reopened")[0].inputs["by"].count("@") == 1
    assert len(records(live, "causes.ranked")) == 2  # diagnosed again, on the same thread
    again = live.service.parts.store.incident(inc)
    assert next(a for a in again["actions"] if a["type"] == "drain_host")["status"] == "awaiting_approval"
    with api_client(live, "operator") as http:
        assert http.post(f"/api/v1/incidents/{inc}/reopen", json={"reason": "x"}).status_code == 409  # not closed
    # The new round is a new plan: its approval is a new decision, and its step a new idempotency key, so
    # the target runs it although a step of the same action index may have run in the last round.
    result = CliRunner().invoke(app, ["approve", inc, str(action["index"]), "--db", str(live.db)])
    assert result.exit_code == 0, result.stdout
    live.wait(lambda: any(a == "drain_host" for _, a, _ in live.target.applied), timeout=20)
    assert [k for k, a, _ in live.target.applied if a == "drain_host"] == [f"{inc}#r1/{action['index']}/do"]
