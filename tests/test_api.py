"""The HTTP API of a real `rtem run` service (embedded NATS, SQLite, uvicorn) over real HTTP:
every endpoint for every role, bad payloads, refusals in the audit log, approvals end to end."""

from __future__ import annotations

import json

import httpx
import pytest

from agent.audit import AuditLog
from agent.config import Settings
from agent.tokens import ROLES, TokenStore
from tests.live import ThreadedService, anomaly, api_client, drain_action

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_ROLES = list(ROLES)


@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    data = tmp_path_factory.mktemp("api") / "data"
    settings = Settings(data_dir=data, diagnose_after_s=5, verify_quiet_s=30, verify_deadline_s=300,
                        http_port=0, http_max_body_bytes=64 * 1024)
    service = ThreadedService(settings, boutique).start()
    tokens = TokenStore(data / "rtem.db")
    service.tokens = {role: tokens.create(f"{role}-1", role)[0] for role in ALL_ROLES}
    service.tokens["scoped"] = tokens.create("carol", "approver", services=["cartservice"])[0]
    service.tokens["revoked"] = tokens.create("mallory", "admin")[0]
    tokens.revoke("mallory")
    service.db = data / "rtem.db"
    # A CPU fault on a host: drain_host is high risk and waits for a person.
    events = [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)]
    with api_client(service, "operator") as http:
        assert http.post("/api/v1/events", json=events[0]).status_code == 202
        batch = http.post("/api/v1/events", content=json.dumps(events[1:]),
                          headers={"content-type": "application/cloudevents-batch+json"})
        assert batch.status_code == 202, batch.text
        assert batch.json()["accepted"] == 9
        service.incident = service.wait(lambda: next(
            (i for i in http.get("/api/v1/incidents").json()["incidents"] if i["status"] == "awaiting_approval"), None))
    yield service
    service.stop()


def endpoints(live) -> list[tuple[str, str, dict, str]]:
    """(method, path, request kwargs, permission) for every endpoint that needs a token."""
    inc = live.incident["id"]
    sample = anomaly("api-sample", "frontend-0", 5)
    sample["type"], sample["data"]["severity"] = "rtem.metric.sample", "info"
    return [
        ("GET", "/metrics", {}, "read"),
        ("GET", "/api/v1/whoami", {}, "read"),
        ("GET", "/api/v1/incidents", {}, "read"),
        ("GET", f"/api/v1/incidents/{inc}", {}, "read"),
        ("GET", f"/api/v1/incidents/{inc}/decisions", {}, "read"),
        ("GET", "/api/v1/audit?limit=5", {}, "read"),
        ("GET", f"/api/v1/incidents/{inc}/report?format=md", {}, "read"),
        ("GET", "/api/v1/rules", {}, "read"),
        ("POST", "/api/v1/chat", {"json": {"question": "what is still open?"}}, "ask"),
        ("POST", "/api/v1/events", {"json": sample}, "ingest"),
        ("POST", "/api/v1/alertmanager", {"json": alertmanager_payload("fp-matrix")}, "ingest"),
        # index 99 does not exist: an allowed caller gets past the role check to a 404
        ("POST", f"/api/v1/incidents/{inc}/actions/99/approve", {"json": {}}, "decide"),
        ("POST", f"/api/v1/incidents/{inc}/actions/99/reject", {"json": {}}, "decide"),
        ("POST", "/api/v1/rules/reload", {}, "rules"),
    ]


def test_every_endpoint_checks_its_role(live):
    clients = {who: api_client(live, who) for who in [None, "revoked", *ALL_ROLES]}
    try:
        for method, path, kwargs, permission in endpoints(live):
            response = clients[None].request(method, path, **kwargs)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert clients["revoked"].request(method, path, **kwargs).status_code == 401, (method, path)
            for role in ALL_ROLES:
                response = clients[role].request(method, path, **kwargs)
                if permission in ROLES[role]:
                    assert response.status_code not in (401, 403), (role, method, path, response.text)
                    assert response.status_code < 500, (role, method, path, response.text)
                else:
                    assert response.status_code == 403, (role, method, path, response.text)
                    assert response.json()["error"] == f"role {role} may not {permission}"
    finally:
        for http in clients.values():
            http.close()


def test_probes_and_the_openapi_document_need_no_token(live):
    with api_client(live) as http:
        assert http.get("/healthz").json() == {"ok": True}
        assert http.get("/readyz").json() == {"ready": True, "role": "leader"}
        paths = http.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/incidents", "/api/v1/events", "/api/v1/alertmanager", "/api/v1/chat",
                 "/api/v1/incidents/{incident_id}/actions/{index}/approve", "/api/v1/rules/reload"):
        assert path in paths


def test_a_denied_attempt_is_in_the_audit_log_with_the_tokens_name(live):
    with api_client(live, "viewer") as http:
        assert http.post("/api/v1/rules/reload").status_code == 403
    with AuditLog(live.db) as audit:
        denied = audit.records(kind="access.denied")[-1]
    assert denied.inputs["token"] == "viewer-1" and denied.inputs["path"] == "/api/v1/rules/reload"
    assert denied.decision == {"status": 403} and denied.reasons == ["role viewer may not rules"]


def test_a_scoped_approver_cannot_approve_outside_its_scope_nor_see_it(live):
    with api_client(live, "scoped") as http:
        response = http.post(f"/api/v1/incidents/{live.incident['id']}/actions/{drain_action(live)['index']}/approve")
        # as if it did not exist (tests/test_api_hardening.py compares the two answers)
        assert response.status_code == 404 and response.json()["error"] == f"no incident {live.incident['id']!r}"
        assert http.get(f"/api/v1/incidents/{live.incident['id']}").status_code == 404
        assert live.incident["id"] not in [i["id"] for i in http.get("/api/v1/incidents").json()["incidents"]]
        hidden = http.post("/api/v1/chat", json={"question": "what is still open?"}).json()
        assert live.incident["id"] not in json.dumps(hidden) and "node-6" not in json.dumps(hidden)
        named = http.post("/api/v1/chat", json={"question": f"how long did {live.incident['id']} take?"}).json()
        assert named["text"].startswith("I don't know") and "not found or not visible" in named["text"]
    with api_client(live, "approver") as http:  # an unscoped token does see it
        assert live.incident["id"] in json.dumps(http.post("/api/v1/chat", json={"question": "what is still open?"}).json())
    with AuditLog(live.db) as audit:
        denied = audit.records(kind="access.denied")[-1]
    assert denied.inputs["token"] == "carol" and denied.decision["status"] == 404


def test_bad_payloads_get_clear_4xx_errors(live):
    good = anomaly("bad-1", "frontend-0", 1)
    with api_client(live, "operator") as http:
        wrong_type = http.post("/api/v1/events", content=json.dumps(good), headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415 and "text/plain" in wrong_type.json()["error"]
        not_json = http.post("/api/v1/events", content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        assert "at line 1 column 2" in not_json.json()["error"]
        big = {**good, "data": {"severity": "info", "message": "x" * 70_000}}
        assert http.post("/api/v1/events", json=big).status_code == 413
        chunked = http.post("/api/v1/events", content=iter([b"[", b" " * 70_000, b"]"]),
                            headers={"content-type": "application/cloudevents-batch+json"})
        assert chunked.status_code == 413, "a body without Content-Length is counted as it streams"
        broken = {**good, "id": "bad-2", "data": {"severity": "loud"}}
        batch = http.post("/api/v1/events", content=json.dumps([good, broken]),
                          headers={"content-type": "application/cloudevents-batch+json"})
        assert batch.status_code == 400
        assert batch.json()["detail"] == [{"index": 1, "id": "bad-2", "reason": batch.json()["detail"][0]["reason"]}]
        assert "severity" in batch.json()["detail"][0]["reason"]
        alert = http.post("/api/v1/alertmanager", json={"version": "4", "alerts": [{"labels": {}}]})
        assert alert.status_code == 400 and alert.json()["detail"] == ["alerts[0].labels: missing or empty"]
        chat = http.post("/api/v1/chat", json={"question": ""})
        assert chat.status_code == 422 and chat.json()["detail"][0]["where"] == "body.question"
        assert "Traceback" not in chat.text
    # nothing of the rejected batch was published
    with api_client(live, "viewer") as http:
        assert http.get("/api/v1/audit").status_code == 200
    from agent.store import IncidentStore
    store = IncidentStore(live.db, readonly=True)
    assert not store.known_ids(["bad-1", "bad-2"])
    store.close()


def alertmanager_payload(fingerprint: str, status: str = "firing") -> dict:
    return {"version": "4", "status": status, "receiver": "rtem", "groupKey": "{}:{alertname=\"HighLatency\"}",
            "externalURL": "http://alertmanager:9093", "commonLabels": {"alertname": "HighLatency"},
            "commonAnnotations": {}, "groupLabels": {},
            "alerts": [{"status": status, "labels": {"alertname": "HighLatency", "severity": "critical",
                                                     "pod": "checkoutservice-0"},
                        "annotations": {"summary": "p99 latency over 2s"},
                        "startsAt": "2024-05-01T12:00:30Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint}]}


def test_alertmanager_alerts_become_rtem_alert_events_deduplicated_by_fingerprint(live):
    from agent.store import IncidentStore

    with api_client(live, "operator") as http:
        first = http.post("/api/v1/alertmanager", json=alertmanager_payload("abc123"))
        again = http.post("/api/v1/alertmanager", json=alertmanager_payload("abc123"))  # Alertmanager repeats
    assert first.status_code == 202 and first.json()["accepted"] == 1
    assert again.json() == {**first.json(), "accepted": 0, "duplicates": 1}
    event_id = first.json()["ids"][0]

    def stored():
        store = IncidentStore(live.db, readonly=True)
        try:
            return [(e["type"], e["subject"], e["severity"], e["message"]) for e in store.events_by_id([event_id])]
        finally:
            store.close()
    assert live.wait(stored) == [("rtem.alert", "checkoutservice-0", "critical", "p99 latency over 2s")]


def test_the_console_session_cookie_stands_for_the_token(live):
    # signing in and out is for the console only: its origin and header (tests/test_csrf.py)
    with api_client(live) as http:
        http.headers.update({"origin": live.url, "x-rtem-console": "1"})
        assert http.post("/api/v1/session", json={"token": "rtem_wrong"}).status_code == 401
        login = http.post("/api/v1/session", json={"token": live.tokens["viewer"]})
        assert login.status_code == 204 and "httponly" in login.headers["set-cookie"].lower()
        assert http.get("/api/v1/whoami").json()["name"] == "viewer-1"
        assert http.delete("/api/v1/session").status_code == 204
        http.cookies.clear()
        assert http.get("/api/v1/whoami").status_code == 401


def test_an_approver_approves_over_http_and_the_action_runs(live):
    action = drain_action(live)
    path = f"/api/v1/incidents/{live.incident['id']}/actions/{action['index']}"
    with api_client(live, "approver") as http:
        decided = http.post(f"{path}/approve", json={"reason": "host is unhealthy, capacity is fine"})
        assert decided.status_code == 200, decided.text
        assert decided.json() == {"incident": live.incident["id"], "action": action["index"], "decision": "approve",
                                  "by": "approver-1"}
        live.wait(lambda: any(a == "drain_host" for _, a, _ in live.target.applied))
        again = http.post(f"{path}/reject")
        assert again.status_code == 409, "a decided action no longer waits"
        report = http.get(f"/api/v1/incidents/{live.incident['id']}/report?format=html")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    with AuditLog(live.db) as audit:
        decided_records = audit.records(incident_id=live.incident["id"], kind="approval.decided")
    assert decided_records[0].inputs["by"] == "approver-1" and decided_records[0].inputs["via"] == "api"
    assert decided_records[0].reasons == ["host is unhealthy, capacity is fine"]


def test_rtem_run_serves_the_console_and_stops_cleanly_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.conftest import EXAMPLES

    env = {**os.environ, "RTEM_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--topology", str(EXAMPLES / "boutique-topology.json"),
                             "--http-port", "0", "--metrics-port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "console http" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "rtem run exited before serving"
        url = line.split("console ")[1].split()[0]
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}
        assert "<html" in httpx.get(f"{url}/login").text.lower()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("nats-server" in c.name() for c in children)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, "the embedded NATS server outlived rtem run"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_chat_over_http_answers_through_the_llm_within_the_callers_scope(tmp_path, boutique):
    from tests.llm_server import ScriptedLLM, cited_answer

    llm = ScriptedLLM().start()
    settings = Settings(data_dir=tmp_path / "data", http_port=0, diagnose_after_s=1e6, llm="openai",
                        llm_base_url=llm.url, llm_api_key="sk-test-key", llm_model="scripted-model",
                        llm_retry_attempts=1, llm_timeout_s=5)
    service = ThreadedService(settings, boutique).start()
    try:
        tokens = TokenStore(tmp_path / "data" / "rtem.db")
        service.tokens = {"ops": tokens.create("ops", "operator")[0],
                          "cart": tokens.create("cart-ops", "operator", services=["cartservice"])[0]}
        with api_client(service, "ops") as http:
            events = [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(5)]
            assert http.post("/api/v1/events", content=json.dumps(events),
                             headers={"content-type": "application/cloudevents-batch+json"}).status_code == 202
            incident_id = service.wait(lambda: http.get("/api/v1/incidents").json()["incidents"])[0]["id"]
            llm.on("chat_answer", cited_answer)
            reply = http.post("/api/v1/chat", json={"question": "what is still open?"}).json()
        assert reply["reasoner"] == "llm" and reply["versions"]["model"] == "scripted-model", reply
        assert incident_id in llm.user_prompt("chat_answer") and reply["citations"]["seqs"]
        asked = len(llm.requests)
        llm.on("chat_answer", cited_answer)
        with api_client(service, "cart") as http:
            scoped = http.post("/api/v1/chat", json={"question": "what is still open?"}).json()
        assert all(incident_id not in json.dumps(request) for request in llm.requests[asked:]), \
            "the LLM never sees an incident outside the caller's scope"
        assert incident_id not in json.dumps(scoped)
    finally:
        service.stop()
        llm.stop()


def test_ingest_answers_503_while_the_bus_is_down_and_accepts_again_after(tmp_path, boutique):
    settings = Settings(data_dir=tmp_path / "data", http_port=0)
    service = ThreadedService(settings, boutique).start()
    try:
        service.tokens = {"ops": TokenStore(tmp_path / "data" / "rtem.db").create("ops", "operator")[0]}
        event = anomaly("down-1", "frontend-0", 1)
        with api_client(service, "ops") as http:
            service.service.server.stop()  # the embedded NATS server goes away
            service.wait(lambda: http.get("/readyz").status_code == 503)
            refused = http.post("/api/v1/events", json=event)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert "nothing was accepted" in refused.json()["error"]
            service.service.server.start()  # same port: the client reconnects
            service.wait(lambda: http.get("/readyz").status_code == 200, timeout=60)
            assert http.post("/api/v1/events", json=event).status_code == 202
    finally:
        service.stop()
