"""Issue 11's hardening of the HTTP API, against a real `rtem run` over real HTTP: bad input is a 4xx that
names the problem (never a 500, never republished as non-standard JSON), an incident outside a token's
scope answers exactly as one that does not exist, access denials are for admins' eyes, every response
carries the security headers, and the console's cookie only acts for the console itself (the browser
side of that is tests/test_csrf.py). The pure checks at the end need no server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.tokens import ROLES
from bus import InvalidEvent, parse_event
from tests.helpers import cloud_event
from tests.live import api_client, drain_action, serving_with_a_cpu_incident

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 100_000 + "]" * 100_000
SURROGATE = '"\\ud800"'
BIG_INT = "1" * 5000


@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    service = serving_with_a_cpu_incident(tmp_path_factory.mktemp("hardening") / "data", boutique, {
        "operator": ("operator-1", "operator", ()),
        **{role: (f"{role}-1", role, ()) for role in ROLES if role != "operator"},
        "carol": ("carol", "approver", ("cartservice",)), "carla": ("carla", "viewer", ("cartservice",))})
    yield service
    service.stop()


def stored_ids(live, ids: list[str]) -> set[str]:
    from agent.store import IncidentStore
    store = IncidentStore(live.db, readonly=True)
    try:
        return set(store.known_ids(ids))
    finally:
        store.close()


# -- 6. bad input is a 4xx that names the problem ------------------------------------------------------

def event_text(event_id: str, value: str) -> str:
    """A CloudEvent as JSON text with `value` (raw JSON) as one of its attributes."""
    text = json.dumps(cloud_event(event_id, "frontend-0", "2024-05-01T12:00:00Z", x="PLACEHOLDER"))
    return text.replace('"PLACEHOLDER"', value)


BAD_BODIES = [
    ("nested", DEEP, "nested deeper than 64 levels"),
    ("surrogate", None, "lone UTF-16 surrogate in the string at /data/attributes/x"),
    ("bigint", None, "an integer of 5000 digits is over the 4300-digit limit"),
    ("nan", None, "NaN is not a JSON number"),
    ("infinity", None, "Infinity is not a JSON number"),
    ("overflow", None, "1e999 is out of range for a JSON number"),
]
VALUES = {"surrogate": SURROGATE, "bigint": BIG_INT, "nan": "NaN", "infinity": "-Infinity", "overflow": "1e999"}


@pytest.mark.integration
@pytest.mark.parametrize("name, body, problem", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_json_rtem_cannot_keep_is_a_400_naming_it_on_every_endpoint_that_takes_a_body(live, name, body, problem):
    event_id = f"bad-{name}"
    body = body or event_text(event_id, VALUES[name])
    json_type = {"content-type": "application/json"}
    alert = body if name == "nested" else json.dumps(
        {"version": "4", "alerts": [{"labels": {"alertname": "A"}}]}).replace('"A"', VALUES[name])
    with api_client(live, "admin") as http:
        answers = {
            "events": http.post("/api/v1/events", content=body, headers=json_type),
            "alertmanager": http.post("/api/v1/alertmanager", content=alert, headers=json_type),
            "chat": http.post("/api/v1/chat", headers=json_type, content=body if name == "nested" else
                              f'{{"question": "what is open?", "incident": {VALUES[name]}}}'),
            "approve": http.post(f"/api/v1/incidents/{live.incident['id']}/actions/99/approve", headers=json_type,
                                 content=body if name == "nested" else f'{{"reason": {VALUES[name]}}}'),
        }
    for where, answer in answers.items():
        assert answer.status_code == 400, (where, answer.status_code, answer.text)
        error = answer.json()["error"]
        expected = problem.replace("/data/attributes/x", "") if where != "events" else problem
        assert expected in error, (where, error)
        assert "Traceback" not in answer.text
    assert not stored_ids(live, [event_id]), "nothing of a refused body is published"


ALERT_TYPES = [
    ("endsAt", lambda p: p["alerts"][0].update(status="resolved", endsAt=5), "alerts[0].endsAt: a number, not a string"),
    ("commonLabels", lambda p: p.update(commonLabels=["a"]), "commonLabels: an array, not an object of strings"),
    ("annotations", lambda p: p["alerts"][0].update(annotations="p99 high"),
     "alerts[0].annotations: a string, not an object of strings"),
    ("label values", lambda p: p["alerts"][0]["labels"].update(pod=7), "alerts[0].labels.pod: a number, not a string"),
    ("commonAnnotations", lambda p: p.update(commonAnnotations={"summary": {"x": 1}}),
     "commonAnnotations.summary: an object, not a string"),
    ("fingerprint", lambda p: p["alerts"][0].update(fingerprint=["f"]), "alerts[0].fingerprint: an array, not a string"),
    ("externalURL", lambda p: p.update(externalURL=1), "externalURL: a number, not a string"),
]


@pytest.mark.integration
def test_alertmanager_payloads_with_wrong_types_are_a_400_naming_each_field(live):
    from tests.test_api import alertmanager_payload

    with api_client(live, "operator") as http:
        for name, spoil, problem in ALERT_TYPES:
            payload = alertmanager_payload(f"fp-{name}")
            spoil(payload)
            answer = http.post("/api/v1/alertmanager", json=payload)
            assert answer.status_code == 400, (name, answer.status_code, answer.text)
            assert answer.json()["error"] == "not an Alertmanager webhook payload (version 4)"
            assert problem in answer.json()["detail"], (name, answer.json())
        # nulls read as absent, as before: a resolved alert without endsAt is stamped now
        payload = alertmanager_payload("fp-nulls", status="resolved")
        payload.update(commonLabels=None, commonAnnotations=None)
        payload["alerts"][0].update(endsAt=None, annotations=None)
        accepted = http.post("/api/v1/alertmanager", json=payload)
        assert accepted.status_code == 202, accepted.text


@pytest.mark.integration
def test_audit_since_seq_beyond_64_bits_is_a_422_naming_the_parameter(live):
    with api_client(live, "viewer") as http:
        answer = http.get(f"/api/v1/audit?since_seq={2**64}")
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["where"] == "query.since_seq"
        assert http.get(f"/api/v1/audit?since_seq={2**63 - 1}").json() == {"records": []}


# -- 3. scope: an incident outside it is one that does not exist ---------------------------------------

@pytest.mark.integration
def test_approving_outside_the_scope_answers_exactly_as_an_unknown_incident(live):
    incident_id, index = live.incident["id"], drain_action(live)["index"]
    prefix = incident_id[:len("inc-") + 4]
    with api_client(live, "carol") as http:
        for decision in ("approve", "reject"):
            for hidden, unknown in ((incident_id, "inc-00000000nothing"), (prefix, "inc-zzzz")):
                seen = http.post(f"/api/v1/incidents/{hidden}/actions/{index}/{decision}", json={})
                absent = http.post(f"/api/v1/incidents/{unknown}/actions/{index}/{decision}", json={})
                assert absent.status_code == 404
                assert (seen.status_code, seen.json()) == (404, {"error": f"no incident {hidden!r}"}), seen.text
                assert seen.json()["error"].replace(hidden, unknown) == absent.json()["error"]
                assert incident_id not in seen.text or hidden == incident_id
                assert "node-6" not in seen.text
    with api_client(live, "admin") as http:
        assert http.get(f"/api/v1/incidents/{incident_id}").json()["actions"][index]["status"] == "awaiting_approval"
    with AuditLog(live.db) as audit:
        denied = audit.records(kind="access.denied")[-1]
    assert denied.inputs["token"] == "carol" and denied.decision == {"status": 404}
    assert denied.reasons == [f"incident {incident_id} is outside the scope of token carol"]


@pytest.mark.integration
def test_access_denials_are_listed_to_admins_only(live):
    with api_client(live, "carla") as http:  # a scoped viewer is refused something: a denial is recorded
        assert http.post("/api/v1/rules/reload").status_code == 403
    with api_client(live, "carol") as http:
        http.post(f"/api/v1/incidents/{live.incident['id']}/actions/0/approve", json={})
    for who in ("viewer", "operator", "approver", "rule_author", "carol", "carla"):
        with api_client(live, who) as http:
            listed = http.get("/api/v1/audit?limit=1000").json()["records"]
            assert not [r for r in listed if r["kind"] == "access.denied"], who
            assert http.get("/api/v1/audit?kind=access.denied").json() == {"records": []}, who
            if who in ("carol", "carla"):
                assert live.incident["id"] not in json.dumps(listed)
    with api_client(live, "admin") as http:
        denied = http.get("/api/v1/audit?kind=access.denied&limit=1000").json()["records"]
    assert {"carla", "carol"} <= {r["inputs"]["token"] for r in denied}


# -- 2. CSRF and headers, as plain HTTP (the browser side is tests/test_csrf.py) -------------------------

@pytest.mark.integration
def test_every_response_carries_the_security_headers(live):
    with api_client(live) as http:
        answers = {"page": http.get("/"), "login": http.get("/login"), "static": http.get("/static/console.js"),
                   "probe": http.get("/healthz"), "401": http.get("/api/v1/incidents"),
                   "404": http.get("/nowhere"), "report page": http.get("/reports/inc-x")}
    with api_client(live, "viewer") as http:
        answers["json"] = http.get("/api/v1/whoami")
        answers["report"] = http.get(f"/api/v1/incidents/{live.incident['id']}/report?format=html")
    for what, answer in answers.items():
        headers = answer.headers
        assert headers["x-frame-options"] == "DENY", what
        assert headers["x-content-type-options"] == "nosniff", what
        assert headers["referrer-policy"] == "no-referrer", what
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy, what
        assert "script-src 'self'" in policy or "default-src 'none'" in policy, what
        assert "script-src 'self' 'unsafe-inline'" not in policy, what
    assert "sandbox" in answers["report"].headers["content-security-policy"]
    assert "'unsafe-inline'" not in answers["page"].headers["content-security-policy"]
    # the console's templates have no inline script or style for the policy to forbid
    for template in (ROOT / "agent" / "api" / "templates").glob("*.html"):
        text = template.read_text("utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text) and "style=" not in text and "<style" not in text, template


@pytest.mark.integration
def test_the_cookie_acts_only_with_the_consoles_origin_and_header_and_bearer_tokens_are_unaffected(live):
    own = live.url
    console = {"origin": own, "x-rtem-console": "1"}
    with api_client(live) as http:
        refused = http.post("/api/v1/session", json={"token": live.tokens["rule_author"]})
        assert refused.status_code == 403 and "cross-site request refused" in refused.json()["error"]
        assert http.post("/api/v1/session", json={"token": live.tokens["rule_author"]},
                         headers=console).status_code == 204
        attempts = [
            {},  # no Origin, no Sec-Fetch-Site: not a browser's same-origin request
            {"origin": "http://127.0.0.1:1", "x-rtem-console": "1"},  # another port is another origin
            {"origin": "null", "x-rtem-console": "1"},
            {"sec-fetch-site": "same-site", "x-rtem-console": "1"},
            {"origin": own},  # the console's header is missing: a form post
            {"sec-fetch-site": "same-origin"},
        ]
        for headers in attempts:
            answer = http.post("/api/v1/rules/reload", headers=headers)
            assert answer.status_code == 403, (headers, answer.text)
            assert answer.json()["error"].startswith("cross-site request refused"), headers
        assert http.post("/api/v1/rules/reload", headers=console).status_code == 200
        assert http.post("/api/v1/rules/reload", headers={"sec-fetch-site": "same-origin",
                                                          "x-rtem-console": "1"}).status_code == 200
        assert http.get("/api/v1/whoami").status_code == 200, "reads need neither"
        assert http.delete("/api/v1/session").status_code == 403
        assert http.delete("/api/v1/session", headers=console).status_code == 204
    with AuditLog(live.db) as audit:
        denied = audit.records(kind="access.denied")[-1]
    assert denied.inputs["token"] == "rule_author-1" and denied.decision == {"status": 403}
    assert denied.reasons[0].startswith("cross-site request refused")
    with api_client(live, "rule_author", cookies={"rtem_token": live.tokens["viewer"]}) as http:
        answer = http.post("/api/v1/rules/reload", headers={"origin": "http://127.0.0.1:1"})
        assert answer.status_code == 200, "a bearer token is not the cookie: no browser adds it by itself"


# -- 8. who may ingest, and the docs agree ------------------------------------------------------------

def test_the_role_table_in_the_docs_is_the_code():
    text = (ROOT / "docs" / "api.md").read_text("utf-8")
    table = text.split("## Tokens and roles", 1)[1].split("**Scope.**", 1)[0]
    header = next(line for line in table.splitlines() if line.startswith("| role |"))
    permissions = [cell.strip(" `") for cell in header.strip("|").split("|")[1:]]
    assert set(permissions) == set().union(*ROLES.values()), header
    documented = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == len(permissions) + 1 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = frozenset(p for p, c in zip(permissions, cells[1:]) if c == "yes")
    assert documented == ROLES
    assert not ROLES["approver"] & {"ingest"}, "an approver is a person deciding; producers ingest"


# -- 6. the bus's own door refuses the same ----------------------------------------------------------

@pytest.mark.parametrize("value, reason", [
    ("NaN", "NaN is not a JSON number"), ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"), ("1e999", "1e999 is out of range"),
    (SURROGATE, "lone UTF-16 surrogate in the string at /data/attributes/x"),
    (BIG_INT, "over the 4300-digit limit"), ("[" * 70 + "]" * 70, "nested deeper than 64 levels"),
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
])
def test_parse_event_refuses_json_that_could_not_be_republished_or_stored(value, reason):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(event_text("e-bad", value).encode())
    assert reason in caught.value.reason


def test_text_with_a_raw_lone_surrogate_is_an_invalid_event():
    with pytest.raises(InvalidEvent, match="lone UTF-16 surrogate in the string at /id"):
        parse_event('{"id": "\ud800"}')


def test_a_time_that_leaves_the_calendar_in_utc_is_an_invalid_event():
    event = cloud_event("e-edge", "frontend-0", "0001-01-01T00:00:00+01:00")
    with pytest.raises(InvalidEvent, match="is out of range in UTC"):
        parse_event(json.dumps(event))


def test_parse_event_still_takes_deep_enough_events_and_real_unicode():
    event = parse_event(event_text("e-ok", '{"a": [[{"b": "\\ud83d\\ude00 ok"}]], "n": 1.5e300}'))
    assert event.attributes["x"] == {"a": [[{"b": "\U0001F600 ok"}]], "n": 1.5e300}


@pytest.mark.integration
async def test_an_event_with_nan_published_straight_to_the_bus_goes_to_the_dlq_with_its_reason(bus):
    good = json.dumps(cloud_event("ok-1", "frontend-0", "2024-05-01T12:00:00Z", x=1)).encode()
    bad = event_text("nan-1", "NaN").encode()
    await bus.publish_lines([bad, good])
    seen = []

    async def handler(events):
        seen.extend(e.id for e in events)

    stats = await bus.consume(handler, until_drained=True, fetch_timeout=0.2)
    assert seen == ["ok-1"] and stats.invalid == 1
    [letter] = await bus.dead_letters()
    assert "NaN is not a JSON number" in letter.reason and letter.data == bad
