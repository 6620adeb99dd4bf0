"""Confirmed causes (issue 14, item 1): the pure checks and "the confirmed cause as of time T"
(agent/incident/_confirm.py), kept through `agent.confirm.confirm` over a real SQLite store and audit log
(fast); and through a live `rtem run`: the API (roles, scope, 422 with candidates, corrections), the CLI,
`rtem incidents show`, the incident detail, the report and chat (integration)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.confirm import confirm, confirmed_of
from agent.incident import ConfirmRefusal, ConfirmRefused, check_cause, confirmation, confirmed_causes
from agent.store import IncidentStore
from tests.helpers import TOPOLOGY
from tests.live import api_client, serving_with_a_cpu_incident

NOW = datetime(2026, 1, 15, 15, 0, tzinfo=timezone.utc)
INCIDENT = {"id": "inc-1", "entities": ["cart-0", "frontend-0"],
            "root_causes": [{"entity": "cart-1"}, {"entity": "host-a"}]}


# -- pure -------------------------------------------------------------------------------------------------

def test_a_cause_must_name_an_entity_of_the_topology_or_the_incident(shop):
    assert check_cause(" cart-0 ", INCIDENT) == "cart-0"  # the incident's own
    assert check_cause("host-a", INCIDENT) == "host-a"  # one it ranked
    assert check_cause("orders-db", INCIDENT, shop.by_id) == "orders-db"  # the topology's
    with pytest.raises(ConfirmRefused) as refused:
        check_cause("orders-db", INCIDENT)  # without the topology it is unknown
    assert refused.value.kind == ConfirmRefusal.UNKNOWN_ENTITY and refused.value.kind.http_status == 422
    with pytest.raises(ConfirmRefused) as typo:
        check_cause("cart-9", INCIDENT, shop.by_id)
    assert "'cart-9' is not an entity of the topology or of incident inc-1" in typo.value.message
    assert typo.value.detail["candidates"][:3] == ["cart", "cart-0", "cart-1"]  # near names first
    with pytest.raises(ConfirmRefused, match="the cause is empty"):
        check_cause("  ", INCIDENT)


def test_agreement_is_rtems_first_rank_and_a_service_matches_its_instances(shop):
    first = confirmation(INCIDENT, "cart", fault_type="memory", note="", by="a", service_of=shop.service_of)
    assert (first["agreed"], first["rank"], first["ranked_first"]) == (True, 1, "cart-1")
    second = confirmation(INCIDENT, "host-a", fault_type=None, note="", by="a", service_of=shop.service_of)
    assert (second["agreed"], second["rank"]) == (False, 2)
    unranked = confirmation(INCIDENT, "cart", fault_type=None, note="", by="a")  # no topology: no instances
    assert (unranked["agreed"], unranked["rank"], unranked["corrects"]) == (False, None, None)


# -- kept, over a real store and audit log ----------------------------------------------------------------

@pytest.fixture
def kept(tmp_path):
    store = IncidentStore(tmp_path / "rtem.db")
    for incident_id, status in (("inc-1", "diagnosed"), ("inc-2", "merged")):
        store.upsert_incident({"id": incident_id, "first_ts": NOW.timestamp(), "last_ts": NOW.timestamp(),
                               "severity": "error", "entities": ["cart-0", "frontend-0"], "detections": ["x"],
                               "signals": 3})
        store.save_diagnosis(incident_id, status=status, root_causes=[{"entity": "cart-0"}], actions=[],
                             versions={})
    audit = AuditLog(tmp_path / "rtem.db")
    yield store, audit
    audit.close()
    store.close()


def test_a_correction_is_a_new_record_and_the_latest_as_of_a_time_counts(kept, shop):
    store, audit = kept
    first = confirm(store, audit, "inc-1", "cart-0", by="alice", via="cli", operator="alice@host", topology=shop,
                    now=NOW)
    second = confirm(store, audit, "inc-1", "redis", by="bob", via="api", role="operator", fault_type=" cache ",
                     note="evicted keys", topology=shop, now=NOW + timedelta(minutes=10))
    assert first.agreed and not second.agreed and second.ranked_first == "cart-0"
    records = audit.records(incident_id="inc-1", kind="cause.confirmed")
    assert [r.decision["cause"] for r in records] == ["cart-0", "redis"]  # all kept
    assert records[1].decision["corrects"] == records[0].seq
    assert records[0].inputs["operator"] == "alice@host" and records[0].node == "cli"
    assert records[1].inputs | {"ranked": None} == {"cause": "redis", "fault_type": "cache", "note": "evicted keys",
                                                    "by": "bob", "via": "api", "role": "operator", "ranked": None}
    assert "bob corrected the cause (was cart-0): redis" in records[1].reasons[0]
    assert confirmed_of(audit, "inc-1").entity == "redis"
    assert confirmed_of(audit, "inc-1", as_of=NOW + timedelta(minutes=5)).entity == "cart-0"
    assert confirmed_of(audit, "inc-1", as_of=NOW - timedelta(seconds=1)) is None  # nothing before the first
    every = confirmed_causes(audit.records(), as_of=NOW)
    assert {k: v.entity for k, v in every.items()} == {"inc-1": "cart-0"}


def test_refusals_leave_no_record(kept, shop):
    store, audit = kept
    with pytest.raises(ConfirmRefused) as absent:
        confirm(store, audit, "inc-nope", "cart-0", by="a", via="cli")
    with pytest.raises(ConfirmRefused) as hidden:
        confirm(store, audit, "inc-1", "cart-0", by="a", via="api", visible=lambda row: False)
    assert absent.value.kind == hidden.value.kind == ConfirmRefusal.NO_SUCH_INCIDENT
    assert hidden.value.message == "no incident 'inc-1'"  # exactly as if it did not exist
    with pytest.raises(ConfirmRefused) as merged:
        confirm(store, audit, "inc-2", "cart-0", by="a", via="cli")
    assert merged.value.kind == ConfirmRefusal.MERGED and merged.value.kind.http_status == 409
    with pytest.raises(ConfirmRefused):
        confirm(store, audit, "inc-1", "nowhere-0", by="a", via="cli", topology=shop)
    assert audit.records(kind="cause.confirmed") == []


# -- through a live `rtem run`: API, CLI, detail, report, chat --------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    service = serving_with_a_cpu_incident(tmp_path_factory.mktemp("confirm") / "data", boutique, {
        "operator": ("operator-1", "operator", ()), "viewer": ("viewer-1", "viewer", ()),
        "scoped": ("dave", "operator", ("cartservice",)), "admin": ("admin-1", "admin", ())})
    yield service
    service.stop()


@pytest.mark.integration
def test_roles_scope_and_unknown_entities_are_refused_over_http(live):
    inc = live.incident["id"]
    body = {"cause": "node-6"}
    with api_client(live, "viewer") as viewer, api_client(live, "scoped") as scoped, \
            api_client(live, "operator") as operator, api_client(live) as anonymous:
        assert anonymous.post(f"/api/v1/incidents/{inc}/confirm", json=body).status_code == 401
        assert viewer.post(f"/api/v1/incidents/{inc}/confirm", json=body).status_code == 403
        hidden = scoped.post(f"/api/v1/incidents/{inc}/confirm", json=body)
        absent = scoped.post("/api/v1/incidents/inc-nope/confirm", json=body)
        assert hidden.status_code == absent.status_code == 404 and hidden.json()["error"] == f"no incident {inc!r}"
        unknown = operator.post(f"/api/v1/incidents/{inc}/confirm", json={"cause": "node-66"})
        assert unknown.status_code == 422 and "'node-66' is not an entity" in unknown.json()["error"]
        assert "node-6" in unknown.json()["detail"]["candidates"]
        assert operator.post(f"/api/v1/incidents/{inc}/confirm", json={}).status_code == 422  # no cause
    with AuditLog(live.db) as audit:
        assert audit.records(incident_id=inc, kind="cause.confirmed") == []
        assert audit.records(kind="access.denied")[-1].inputs["token"] == "dave"


@pytest.mark.integration
def test_confirm_and_correct_over_http_and_the_cli_then_detail_report_and_chat_show_it(live):
    inc = live.incident["id"]
    with api_client(live, "operator") as http:
        kept = http.post(f"/api/v1/incidents/{inc}/confirm", json={"cause": "cartservice-0", "note": "first guess"})
        assert kept.status_code == 200, kept.text
        assert kept.json()["by"] == "operator-1" and kept.json()["record"] == "cause.confirmed"
        runner = CliRunner()
        cli = runner.invoke(app, ["incidents", "confirm", inc[:8], "--cause", "node-6", "--fault-type",
                                  "node CPU load", "--db", str(live.db), "--json"])
        assert cli.exit_code == 0, cli.output
        corrected = json.loads(cli.stdout)
        assert corrected["cause"] == "node-6" and "@" in corrected["by"]  # user@host
        assert corrected["agreed"] is (live.incident["root_causes"][0]["entity"] == "node-6")
        detail = http.get(f"/api/v1/incidents/{inc}").json()["confirmed"]
        assert (detail["cause"], detail["fault_type"], detail["seq"]) == ("node-6", "node CPU load", corrected["seq"])
        report = http.get(f"/api/v1/incidents/{inc}/report").text
        assert f"**Confirmed cause:** node-6 ({corrected['by']}, node CPU load;" in report
        assert f"[seq {corrected['seq']}]" in report
        chat = http.post("/api/v1/chat", json={"question": "what was the root cause?", "incident": inc}).json()
        assert chat["intent"] == "cause" and "The confirmed cause is node-6" in chat["text"], "beside the ranking"
        assert corrected["seq"] in chat["citations"]["seqs"]
        chat = http.post("/api/v1/chat", json={"question": "what was the confirmed cause?", "incident": inc}).json()
        assert chat["intent"] == "confirmed" and f"{inc}: node-6" in chat["text"], chat["text"]
        assert corrected["seq"] in chat["citations"]["seqs"]
        page = http.get(f"/incidents/{inc}")
        assert page.status_code == 200 and 'data-testid="confirmed"' in page.text
    shown = runner.invoke(app, ["incidents", "show", inc, "--db", str(live.db), "--json"])
    assert json.loads(shown.stdout)["confirmed"]["cause"] == "node-6"
    refused = runner.invoke(app, ["incidents", "confirm", inc, "--cause", "node-66", "--db", str(live.db)])
    assert refused.exit_code == 1 and "not an entity" in refused.output and "node-6" in refused.output
    with AuditLog(live.db) as audit:
        records = audit.records(incident_id=inc, kind="cause.confirmed")
    assert [(r.decision["cause"], r.node) for r in records] == [("cartservice-0", "api"), ("node-6", "cli")]
    assert records[0].inputs["role"] == "operator" and records[1].decision["corrects"] == records[0].seq


@pytest.mark.integration
def test_what_was_learned_over_http_is_what_the_cli_says_and_only_admins_forget_it(live):
    cli = CliRunner().invoke(app, ["learn", "status", "--db", str(live.db), "--topology", str(TOPOLOGY), "--json"])
    assert cli.exit_code == 0, cli.output
    with api_client(live, "viewer") as viewer, api_client(live, "scoped") as scoped, \
            api_client(live, "operator") as operator, api_client(live, "admin") as admin, api_client(live) as anonymous:
        assert anonymous.get("/api/v1/learning").status_code == 401
        refused = scoped.get("/api/v1/learning")
        assert refused.status_code == 403 and "scoped" in refused.json()["error"]
        read = viewer.get("/api/v1/learning")
        assert read.status_code == 200 and read.json() == json.loads(cli.stdout)
        assert operator.post("/api/v1/learning/reset", json={"note": "x"}).status_code == 403
        forgot = admin.post("/api/v1/learning/reset", json={"note": "new platform"})
        assert forgot.status_code == 200, forgot.text
        assert forgot.json()["record"] == "learn.reset" and forgot.json()["by"] == "admin-1"
        assert viewer.get("/api/v1/learning").json()["reset_seq"] == forgot.json()["seq"]
        assert admin.post("/api/v1/learning/reset", json={"note": 5}).status_code == 422
    with AuditLog(live.db) as audit:
        [record] = audit.records(kind="learn.reset")
        assert (record.node, record.inputs["by"], record.inputs["note"]) == ("api", "admin-1", "new platform")
        denied = [r for r in audit.records(kind="access.denied") if r.inputs["path"] == "/api/v1/learning"]
        assert denied and denied[-1].inputs["token"] == "dave"
