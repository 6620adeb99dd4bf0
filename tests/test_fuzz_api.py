"""Fuzzing a real `rtem run` over HTTP (issue 11): every operation of its /openapi.json, with an admin token
and without one, plus bodies the schema does not describe (events, Alertmanager webhooks). The promise: no
5xx, an answer to every request within REQUEST_TIMEOUT_S, and a service still healthy at the end.

Schemathesis generates the requests from the live service's own OpenAPI document (valid and invalid path
and query parameters and bodies); `/api/v1/events` and `/api/v1/alertmanager` read their body by hand, so
hypothesis strategies below stand in for the schema there. Examples per operation and identity: 10, or
RTEM_FUZZ_API_EXAMPLES (docs/testing.md, "Fuzzing").
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from agent.config import Settings
from agent.tokens import TokenStore
from tests.live import ThreadedService, anomaly

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              # the service's own thread draws from `random` while hypothesis generates; nothing to fix here
              pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")]

EXAMPLES = int(os.environ.get("RTEM_FUZZ_API_EXAMPLES", "25"))
REQUEST_TIMEOUT_S = 10.0
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
INGEST = settings(FUZZ, max_examples=EXAMPLES * 4)
SENT: Counter[tuple[str, int]] = Counter()  # (operation, status) -> requests; printed at the end (pytest -s)


@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    data = tmp_path_factory.mktemp("fuzz-api") / "data"
    config = Settings(data_dir=data, diagnose_after_s=5, verify_quiet_s=30, verify_deadline_s=300, http_port=0,
                      http_max_body_bytes=64 * 1024)
    service = ThreadedService(config, boutique).start()
    tokens = TokenStore(data / "rtem.db")
    service.admin = tokens.create("fuzz-admin", "admin")[0]
    tokens.close()
    # An incident awaiting approval (drain_host on a host), so that paths naming it reach real data.
    with httpx.Client(base_url=service.url, headers=_bearer(service.admin), timeout=30) as http:
        events = [anomaly(f"fz{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)]
        accepted = http.post("/api/v1/events", content=json.dumps(events),
                             headers={"content-type": "application/cloudevents-batch+json"})
        assert accepted.status_code == 202, accepted.text
        service.incident = service.wait(lambda: next(
            (i["id"] for i in http.get("/api/v1/incidents").json()["incidents"] if i["status"] == "awaiting_approval"),
            None))
    service.started = time.monotonic()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def operations(live):
    """Every operation of the live service's /openapi.json, as schemathesis reads it."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 15, [op.label for op in found]
    return found


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def answered(response, what: str, operation: str = "") -> None:
    SENT[operation or what.split("?")[0], response.status_code] += 1
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"


def fuzz(operation, check) -> str | None:
    """Run `check(case)` on EXAMPLES generated cases of one operation, valid and invalid (schemathesis'
    negative mode breaks one part of the request at a time); the shrunk failure, or None."""
    modes = [operation.as_strategy(GenerationMode.POSITIVE)]
    if operation.path_parameters or operation.query or operation.body:
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=st.one_of(modes))
    @FUZZ
    def run(case):
        note(case.as_curl_command())
        check(case)

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - collected, so every operation is fuzzed before the test fails
        return f"{operation.label}: {type(exc).__name__}: {exc}"
    return None


# schemathesis' own pytest integration (`from_fixture`, `parametrize`) does not run under pytest 9
# (it reads a private attribute pytest 9 no longer has), so each test walks the operations itself.
def test_every_operation_as_admin(live, operations):
    def check(case):
        # the console's own headers too, so that POST/DELETE /session get past their CSRF check
        headers = {**_bearer(live.admin), "origin": live.url, "x-rtem-console": "1"}
        response = case.call(base_url=live.url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        answered(response, case.as_curl_command(), f"admin {case.operation.label}")

    failures = [failure for operation in operations if (failure := fuzz(operation, check))]
    assert not failures, "\n\n".join(failures)


def test_every_operation_without_a_token(live, operations):
    def check(case):
        response = case.call(base_url=live.url, timeout=REQUEST_TIMEOUT_S)
        answered(response, case.as_curl_command(), f"anonymous {case.operation.label}")
        if case.path.startswith("/api/v1/") and case.path != "/api/v1/session" or case.path == "/metrics":
            # refused: 401, or a 4xx about the request itself (a body that is not JSON is a 400 before the token)
            assert 400 <= response.status_code < 500, (case.as_curl_command(), response.status_code)

    failures = [failure for operation in operations if (failure := fuzz(operation, check))]
    assert not failures, "\n\n".join(failures)


# -- what the schema does not describe --------------------------------------------------------------------

text = st.text(max_size=16)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3), max_leaves=12)


def either(valid):
    return st.one_of(valid, valid, json_values)


times = st.one_of(st.datetimes(timezones=st.just(None)).map(lambda t: t.isoformat() + "Z"),
                  st.sampled_from(["2024-05-01T12:00:00Z", "0001-01-01T00:00:00Z", "2024-13-01T00:00:00Z", ""]), text)
events = st.fixed_dictionaries({}, optional={
    "specversion": either(st.just("1.0")), "id": either(st.text(min_size=1, max_size=40)),
    "source": either(st.just("/fuzz")), "type": either(st.sampled_from(["rtem.metric.anomaly", "rtem.alert", "x"])),
    "time": either(times), "subject": either(st.sampled_from(["cartservice-0", "node-6", "nowhere"])),
    "data": either(st.fixed_dictionaries({"severity": either(st.sampled_from(["info", "warning", "error", "critical"]))},
                                         optional={"message": either(text), "attributes": json_values}))})
labels = st.dictionaries(st.sampled_from(["alertname", "severity", "pod", "instance", "service"]) | text, text, max_size=3)
alerts = st.fixed_dictionaries({"labels": either(labels)}, optional={
    "status": either(st.sampled_from(["firing", "resolved"])), "startsAt": either(times), "endsAt": either(times),
    "annotations": either(labels), "fingerprint": either(st.text(max_size=20))})
payloads = st.fixed_dictionaries({"version": either(st.just("4")), "alerts": either(st.lists(either(alerts), max_size=3))},
                                 optional={"commonLabels": either(labels), "commonAnnotations": either(labels),
                                           "externalURL": either(text), "status": json_values, "receiver": json_values})
# Valid ones too, so that the publish path runs (202), with odd but allowed content.
valid_events = st.fixed_dictionaries({
    "specversion": st.just("1.0"), "id": st.uuids().map(lambda u: f"fz-{u}"), "source": st.just("/fuzz"),
    "type": st.sampled_from(["rtem.metric.sample", "rtem.log", "fuzz.anything"]),
    "time": st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(lambda t: t.isoformat() + "Z"),
    "subject": st.sampled_from(["cartservice-0", "frontend", "nowhere"]) | st.text(min_size=1, max_size=30),
    "data": st.fixed_dictionaries({"severity": st.sampled_from(["info", "warning"])},
                                  optional={"message": st.text(max_size=60), "attributes": st.dictionaries(text, json_values, max_size=3)})})
valid_payloads = st.fixed_dictionaries({
    "version": st.just("4"), "status": st.sampled_from(["firing", "resolved"]),
    "alerts": st.lists(st.fixed_dictionaries({"labels": labels.filter(bool), "status": st.sampled_from(["firing", "resolved"]),
                                              "startsAt": st.just("2024-05-01T12:00:00Z"), "endsAt": st.just("2024-05-01T12:05:00Z"),
                                              "annotations": labels}), min_size=1, max_size=3)},
    optional={"commonLabels": labels, "externalURL": st.text(min_size=1, max_size=30), "receiver": text})
content_types = st.sampled_from(["application/json", "application/cloudevents+json", "application/cloudevents-batch+json",
                                 "application/json; charset=utf-8", "text/plain", ""])
bodies = st.one_of(events.map(json.dumps), st.lists(events, max_size=3).map(json.dumps), payloads.map(json.dumps),
                   json_values.map(json.dumps), st.binary(max_size=64), st.text(max_size=64))
EVENTS, ALERTMANAGER = "/api/v1/events", "/api/v1/alertmanager"
valid_requests = st.one_of(
    st.tuples(st.just(EVENTS), valid_events.map(json.dumps), st.sampled_from(["application/cloudevents+json", "application/json"])),
    st.tuples(st.just(EVENTS), st.lists(valid_events, min_size=1, max_size=3).map(json.dumps),
              st.just("application/cloudevents-batch+json")),
    st.tuples(st.just(ALERTMANAGER), valid_payloads.map(json.dumps), st.just("application/json")))
any_requests = st.tuples(st.sampled_from([EVENTS, ALERTMANAGER]), bodies, content_types)


@given(request=any_requests)
@INGEST
def test_ingest_arbitrary_bodies(live, request):
    post(live, *request, "arbitrary bodies")


@given(request=valid_requests)
@INGEST
def test_ingest_valid_bodies(live, request):
    """Valid events and payloads with odd content: the publish path runs, and the service consumes them."""
    assert post(live, *request, "valid bodies") == 202


def post(live, path: str, body: str | bytes, content_type: str, kind: str) -> int:
    note(f"POST {path} content-type={content_type!r} body={body!r}")
    headers = {**_bearer(live.admin), "content-type": content_type}
    with httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post(path, content=body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"),
                             headers=headers)
    answered(response, f"POST {path} {content_type!r} {body!r}", f"admin POST {path} ({kind})")
    assert response.status_code in (202, 400, 413, 415, 422), response.text
    return response.status_code


@given(index=st.integers(-(2 ** 70), 2 ** 70) | st.sampled_from([0, 1, 2, 3, 99]), approve=st.booleans(),
       body=st.one_of(st.none(), st.fixed_dictionaries({}, optional={"reason": either(st.text(max_size=40))}), json_values),
       report=st.sampled_from(["md", "html", "pdf", ""]), since=st.integers(-5, 2 ** 63 - 1), limit=st.integers(-5, 2000))
@FUZZ
def test_the_seeded_incident(live, index, approve, body, report, since, limit):
    """Paths that name a real incident: its report, its audit trail, and decisions on its actions."""
    incident = live.incident
    with httpx.Client(base_url=live.url, headers=_bearer(live.admin), timeout=REQUEST_TIMEOUT_S) as http:
        for response in (
            http.get(f"/api/v1/incidents/{incident}"),
            http.get(f"/api/v1/incidents/{incident}/decisions"),
            http.get(f"/api/v1/incidents/{incident}/report", params={"format": report}),
            http.get("/api/v1/audit", params={"incident": incident, "since_seq": since, "limit": limit}),
            http.post(f"/api/v1/incidents/{incident}/actions/{index}/{'approve' if approve else 'reject'}",
                      content=json.dumps(body), headers={"content-type": "application/json"}),
        ):
            answered(response, f"{response.request.method} {response.request.url}",
                     f"admin {response.request.method} {response.request.url.path.replace(incident, '{incident}')}")


# -- the 500s that issue 11's hardening fixed (commit 3849b8b), one request each ------------------------------

NESTED = b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # under the 64 KiB body limit, far over Python's recursion limit
AM = {"version": "4", "alerts": [{"labels": {"alertname": "Down"}, "status": "firing",
                                  "startsAt": "2024-05-01T12:00:00Z"}]}


def _event(**data) -> bytes:
    return json.dumps({**anomaly("fz-odd", "node-6", 1), "data": {"severity": "info", **data}}).encode()


@pytest.mark.parametrize("method, path, body", [
    pytest.param("POST", "/api/v1/events", NESTED, id="nested-json"),
    pytest.param("POST", "/api/v1/events", b'{"id": ' + b"9" * 5000 + b"}", id="5000-digits"),
    pytest.param("POST", "/api/v1/events", _event(attributes={"x": float("nan")}), id="nan"),
    pytest.param("POST", "/api/v1/events", _event(attributes={"x": float("inf")}), id="infinity"),
    pytest.param("POST", "/api/v1/events", _event(message="\ud800"), id="lone-surrogate"),
    pytest.param("POST", "/api/v1/alertmanager", json.dumps({**AM, "commonLabels": []}).encode(), id="am-commonLabels-list"),
    pytest.param("POST", "/api/v1/alertmanager", json.dumps(
        {**AM, "alerts": [{**AM["alerts"][0], "status": "resolved", "endsAt": 0}]}).encode(), id="am-endsAt-number"),
    pytest.param("GET", f"/api/v1/audit?since_seq={2 ** 64}", None, id="since-seq-2-64"),
])
def test_the_fixed_500s_stay_4xx(live, method, path, body):
    headers = {**_bearer(live.admin), "content-type": "application/json"}
    with httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.request(method, path, content=body, headers=headers)
    answered(response, f"{method} {path}", f"fixed 500 {method} {path.split('?')[0]}")
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])


def test_the_service_is_still_healthy_after_the_fuzzing(live):
    """Runs last in this module (pytest keeps file order): the process serves and the bus is connected."""
    with httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S) as http:
        assert http.get("/healthz").json() == {"ok": True}
        assert http.get("/readyz").status_code == 200
        assert http.get("/api/v1/whoami", headers=_bearer(live.admin)).json()["name"] == "fuzz-admin"
    assert live.thread.is_alive()
    by_operation: dict[str, Counter[int]] = {}
    for (operation, status), n in SENT.items():
        by_operation.setdefault(operation, Counter())[status] += n
    print(f"\nfuzzed {sum(SENT.values())} requests in {time.monotonic() - live.started:.0f} s:")
    for operation, statuses in sorted(by_operation.items()):
        print(f"  {operation}: {sum(statuses.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))})")
