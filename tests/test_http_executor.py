"""The HTTP executor: templated URL, headers and body, secrets from the environment and files (never in an
error, a result or the audit log), HMAC signing, contracts whose templates `rules check` refuses at file:line;
and a real local target reached through Executors, then through a live `rtem run`."""

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent import signing, telemetry
from agent.executors import Executors, HttpTransport, RetryPolicy, Step
from agent.http_executor import SCRUBBED, RequestError, read_secrets, render_request, scrub, step_variables
from rules import check_rules, load_contracts, packaged_rules_dir
from rules._http_executor import HttpExecutor, SecretRef

TOKEN = "tok-3f9a1c77e2b54d0c"
SIGNING_KEY = "sig-7d41a0e9b6c3"
NOW = 1_780_000_000.0


def restart_contract(executor: dict) -> dict:
    """The packaged restart_instance contract, with `executor` instead of its NATS subject."""
    doc = json.loads((packaged_rules_dir() / "contracts" / "restart_instance.json").read_text())
    doc["x-rtem"]["executor"] = executor
    return doc


def templated(url: str, signing_file: Path) -> dict:
    return {"kind": "http", "method": "POST", "url": url,
            "headers": {"Authorization": "Bearer {{ secrets.token }}", "X-Incident": "{{ incident_id }}"},
            "body": '{"service": {{ target | tojson }}, "grace": {{ params.grace_seconds | default(30) }}, '
                    '"key": {{ idempotency_key | tojson }}, "why": "rtem {{ action }}"}',
            "secrets": {"token": {"env": "RTEM_TEST_PAYMENTS_TOKEN"}, "signing": {"file": str(signing_file)}},
            "sign": {"secret": "signing"}}


def variables(**params):
    return step_variables("restart_instance", "cart-0", params, "inc-1", "inc-1/0/do", "do")


# -- rendering (fast) ------------------------------------------------------------------------------------------

def test_templates_render_the_step_and_the_secrets_and_sign_the_body(tmp_path):
    (tmp_path / "signing").write_text(SIGNING_KEY + "\n")
    spec = HttpExecutor.model_validate(templated("https://pay.example/{{ target }}/restart", tmp_path / "signing"))
    secrets = read_secrets(spec.secrets, {"RTEM_TEST_PAYMENTS_TOKEN": TOKEN})
    assert secrets == {"token": TOKEN, "signing": SIGNING_KEY}  # the file's trailing newline is not the secret

    request = render_request(spec, variables(grace_seconds=5), secrets, NOW)
    assert request.url == "https://pay.example/cart-0/restart"
    assert json.loads(request.body) == {"service": "cart-0", "grace": 5, "key": "inc-1/0/do",
                                        "why": "rtem restart_instance"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["X-Incident"] == "inc-1"
    assert request.headers["Content-Type"] == "application/json"
    assert signing.verify(SIGNING_KEY.encode(), request.body, request.headers, now=NOW)
    assert not signing.verify(b"another key", request.body, request.headers, now=NOW)


def test_without_templates_the_body_is_the_step_as_json_and_the_url_takes_placeholders():
    spec = HttpExecutor(method="PUT", url="http://hooks.local/{action}/{target}")
    request = render_request(spec, variables(grace_seconds=5), {}, NOW)
    assert request.url == "http://hooks.local/restart_instance/cart-0"
    assert json.loads(request.body) == {"action": "restart_instance", "target": "cart-0",
                                        "params": {"grace_seconds": 5}, "incident_id": "inc-1"}
    assert signing.TIMESTAMP_HEADER not in request.headers


def test_a_value_that_would_break_the_json_body_is_refused_not_sent():
    spec = HttpExecutor(method="POST", url="http://hooks.local/x", body='{"service": "{{ target }}"}')
    with pytest.raises(RequestError, match="not JSON.*tojson"):
        render_request(spec, step_variables("a", 'cart"-0', {}, "inc-1", "k", "do"), {}, NOW)


def test_a_missing_secret_names_where_it_was_looked_for_never_a_value(tmp_path):
    refs = {"token": SecretRef(env="RTEM_TEST_PAYMENTS_TOKEN")}
    with pytest.raises(RequestError, match="environment variable RTEM_TEST_PAYMENTS_TOKEN is not set"):
        read_secrets(refs, {})
    with pytest.raises(RequestError, match=f"file {tmp_path}/absent: No such file"):
        read_secrets({"key": SecretRef(file=str(tmp_path / "absent"))}, {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RequestError, match="is empty"):
        read_secrets({"key": SecretRef(file=str(tmp_path / "empty"))}, {})


def test_a_header_that_renders_a_line_break_is_refused():
    spec = HttpExecutor(method="POST", url="http://hooks.local/x", headers={"X-Target": "{{ params.note }}"})
    with pytest.raises(RequestError, match="header X-Target rendered with a line break"):
        render_request(spec, variables(note="a\r\nX-Admin: 1"), {}, NOW)


def test_scrub_replaces_every_secret_in_nested_results():
    secrets = {"token": TOKEN, "short": TOKEN[:8]}
    echoed = {"ok": False, "error": f"bad token {TOKEN}", "result": {"seen": [f"Bearer {TOKEN}", TOKEN[:8]]}}
    assert scrub(echoed, secrets) == {"ok": False, "error": f"bad token {SCRUBBED}",
                                      "result": {"seen": [f"Bearer {SCRUBBED}", SCRUBBED]}}


# -- contracts that cannot work are refused where they are written (fast) ----------------------------------------

@pytest.mark.parametrize("change, expected, at", [
    ({"body": '{"service": {{ target | tojson }'}, "template does not compile", '"body"'),
    ({"body": '{"who": {{ owner | tojson }}}'}, "uses 'owner', which is not defined", '"body"'),
    ({"headers": {"Authorization": "Bearer {{ secrets.tokn }}"}}, "secrets.tokn, which `secrets` does not declare",
     '"Authorization"'),
    ({"url": "http://x/{{ secrets.token }}"}, "may not be used in the URL", '"url"'),
    ({"sign": {"secret": "nothing"}}, "names the secret 'nothing'", '"secret": "nothing"'),
])
def test_rules_check_refuses_a_bad_template_at_its_line(tmp_path, change, expected, at):
    executor = {**templated("http://hooks.local/{{ target }}", tmp_path / "s"), **change}
    path = _write_contract(tmp_path, executor)
    report = check_rules(tmp_path / "contracts")
    assert not report.ok
    (finding,) = report.errors
    assert expected in finding.message
    assert finding.file == str(path) and finding.line == _line_of(path, at), finding


def test_rules_check_refuses_an_unknown_secret_source(tmp_path):
    executor = templated("http://hooks.local/{{ target }}", tmp_path / "s")
    executor["secrets"]["token"] = {"vault": "kv/payments"}
    path = _write_contract(tmp_path, executor)
    (finding,) = check_rules(tmp_path / "contracts").errors
    assert finding.file == str(path) and finding.line == _line_of(path, '"vault"'), finding
    assert finding.message == "$.x-rtem.executor.secrets.token.vault: unknown field 'vault'"
    assert finding.hint == "allowed here: env, file"


def test_a_well_formed_templated_contract_loads(tmp_path):
    _write_contract(tmp_path, templated("http://hooks.local/{{ target }}", tmp_path / "s"))
    contract = load_contracts(tmp_path / "contracts")["restart_instance"]
    assert contract.executor.sign.secret == "signing"
    assert contract.executor.secrets["token"].env == "RTEM_TEST_PAYMENTS_TOKEN"


def _write_contract(tmp_path: Path, executor: dict) -> Path:
    path = tmp_path / "contracts" / "restart_instance.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(restart_contract(executor), indent=2))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# -- a real target ------------------------------------------------------------------------------------------------

class PaymentsApi:
    """A real HTTP server that checks what a careful target would: the bearer token and the signature.
    It echoes the token back in its result, as a careless one might, so scrubbing can be seen."""

    def __init__(self):
        self.requests: list[tuple[str, dict, bytes]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                api.requests.append((self.path, headers, body))
                good = (headers.get("Authorization") == f"Bearer {TOKEN}"
                        and signing.verify(SIGNING_KEY.encode(), body, headers, now=time.time()))
                payload = {"ok": good, "result": {"authorization": headers.get("Authorization")}}
                if not good:
                    payload["error"] = "bad credentials"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(payload).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def payments(tmp_path, monkeypatch):
    monkeypatch.setenv("RTEM_TEST_PAYMENTS_TOKEN", TOKEN)
    (tmp_path / "signing").write_text(SIGNING_KEY)
    api = PaymentsApi()
    yield api
    api.close()


@pytest.mark.integration
async def test_a_real_target_gets_the_templated_signed_request_and_no_secret_comes_back(tmp_path, payments):
    telemetry.setup("none")  # spans with real ids, exported nowhere: the traceparent must reach the target
    _write_contract(tmp_path, templated(payments.base + "/restart/{{ target }}", tmp_path / "signing"))
    contract = load_contracts(tmp_path / "contracts")["restart_instance"]
    executors = Executors({"http": HttpTransport()}, policy=RetryPolicy(max_attempts=1))

    with telemetry.tracer().start_as_current_span("test") as parent:
        outcome = await executors.run(contract, Step("inc-1/0/do", "inc-1", "restart_instance", "cart-0",
                                                     {"grace_seconds": 5}, "do"))
    assert outcome.ok, outcome
    ((path, headers, body),) = payments.requests
    assert path == "/restart/cart-0"
    assert json.loads(body) == {"service": "cart-0", "grace": 5, "key": "inc-1/0/do", "why": "rtem restart_instance"}
    assert headers["Idempotency-Key"] == "inc-1/0/do" and headers["X-Incident"] == "inc-1"
    assert headers["traceparent"].split("-")[1] == format(parent.get_span_context().trace_id, "032x")
    assert outcome.result == {"authorization": f"Bearer {SCRUBBED}"}
    assert TOKEN not in json.dumps(outcome.to_dict())

    # A rotated secret is read at the next step; the target refuses the old one, and says so without it.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RTEM_TEST_PAYMENTS_TOKEN", "tok-rotated-but-not-yet-at-target")
        refused = await executors.run(contract, Step("inc-1/1/do", "inc-1", "restart_instance", "cart-0", {}, "do"))
        env.delenv("RTEM_TEST_PAYMENTS_TOKEN")
        missing = await executors.run(contract, Step("inc-1/2/do", "inc-1", "restart_instance", "cart-0", {}, "do"))
    assert not refused.ok and refused.error == "bad credentials"
    assert "tok-rotated" not in json.dumps(refused.to_dict())
    assert not missing.ok and "RTEM_TEST_PAYMENTS_TOKEN is not set" in missing.error and len(payments.requests) == 2


@pytest.mark.integration
async def test_a_live_run_acts_through_the_http_contract_and_audits_no_secret(tmp_path, nats_server, bus, boutique,
                                                                             payments):
    from agent.run import Service
    from tests.live import Target, anomaly, publish, settings, wait_for

    rules_dir = tmp_path / "rules"
    for part in ("guardrails", "contracts", "detect"):
        shutil.copytree(packaged_rules_dir() / part, rules_dir / part)
    (rules_dir / "contracts" / "restart_instance.json").write_text(json.dumps(restart_contract(
        templated(payments.base + "/restart/{{ target }}", tmp_path / "signing")), indent=2))
    await Target().attach(bus.nc)  # answers the plan's other steps, which go over NATS
    service = await Service(settings(tmp_path, nats_server, rules_dir=rules_dir), boutique, poll_s=0.05).start()
    try:
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        await wait_for(lambda: restarts(service.parts.audit.records(kind="action.executed")), timeout=20)
        records = service.parts.audit.records()
    finally:
        await service.stop()
    (path, headers, body), *_ = payments.requests
    assert path == "/restart/cartservice-0" and json.loads(body)["service"] == "cartservice-0"
    assert signing.verify(SIGNING_KEY.encode(), body, headers, now=time.time())
    (executed,) = restarts(r for r in records if r.kind == "action.executed")
    assert executed.decision["ok"] is True
    assert executed.decision["result"] == {"authorization": f"Bearer {SCRUBBED}"}
    logged = json.dumps([r.model_dump(mode="json") for r in records])
    assert TOKEN not in logged and SIGNING_KEY not in logged


def restarts(records):
    return [r for r in records if " restart_instance on " in r.inputs["action"]]
