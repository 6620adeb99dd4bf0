"""Executors and sagas: real HTTP and process targets, retries, breakers, compensation, dry runs."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nats
import pytest

from agent.config import Settings
from agent.executors import CommandTransport, Executors, HttpTransport, NatsTransport, RetryPolicy, Step
from agent.run import Service
from bus import Bus, EmbeddedNats
from rules import load_contracts
from rules._contracts import CommandExecutor, HttpExecutor
from tests.live import Target, anomaly, publish, wait_for

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=3, initial_interval_s=0.01, max_interval_s=0.02)


class Webhook:
    """A real HTTP server answering with the scripted status codes, then 200."""

    def __init__(self, codes):
        self.codes = list(codes)
        self.requests = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append((dict(self.headers), json.loads(body)))
                code = hook.codes.pop(0) if hook.codes else 200
                payload = json.dumps({"ok": code == 200, "result": {"n": len(hook.requests)}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/act/{{action}}/{{target}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class LosesFirstReply(Target):
    """Applies the first command, whose reply is then lost with the server; answers the rest as Target does."""

    def __init__(self):
        super().__init__()
        self.lost = asyncio.Event()

    async def _on_command(self, msg) -> None:
        if self.lost.is_set():
            return await super()._on_command(msg)
        request = json.loads(msg.data)
        self.requests.append(request)
        self.applied.append((request["idempotency_key"], request["action"], request["target"]))
        self.answers[request["idempotency_key"]] = {"ok": True, "result": {"applied": True}}
        self.lost.set()


@pytest.fixture
def restart_contract():
    return load_contracts()["restart_instance"]


def step(n=0):
    return Step(f"inc-1/{n}/do", "inc-1", "restart_instance", "cart-0", {}, "do")


async def test_a_webhook_is_retried_on_5xx_and_carries_the_idempotency_key(restart_contract):
    hook = Webhook([503, 500])
    try:
        contract = restart_contract.model_copy(update={"executor": HttpExecutor(method="POST", url=hook.url)})
        outcome = await Executors({"http": HttpTransport()}, policy=FAST).run(contract, step())
        assert outcome.ok and outcome.attempts == 3
        assert [h["Idempotency-Key"] for h, _ in hook.requests] == ["inc-1/0/do"] * 3
        assert hook.requests[0][1]["target"] == "cart-0"
    finally:
        hook.close()


async def test_a_failing_target_opens_its_breaker_and_is_then_spared(restart_contract):
    hook = Webhook([500] * 100)
    opened = []
    try:
        contract = restart_contract.model_copy(update={"executor": HttpExecutor(method="POST", url=hook.url)})
        executors = Executors({"http": HttpTransport()}, policy=RetryPolicy(max_attempts=1), breaker_threshold=3,
                              on_breaker=lambda target, error: opened.append(target))
        for n in range(3):
            assert not (await executors.run(contract, step(n))).ok
        assert opened == ["cart-0"] and executors.breaker("cart-0").state == "open"
        before = len(hook.requests)
        spared = await executors.run(contract, step(9))
        assert spared.breaker_open and not spared.ok and len(hook.requests) == before, "no call while open"
    finally:
        hook.close()


async def test_a_half_open_breaker_closes_after_a_success(restart_contract):
    hook = Webhook([500, 500])
    now = [0.0]
    try:
        contract = restart_contract.model_copy(update={"executor": HttpExecutor(method="POST", url=hook.url)})
        executors = Executors({"http": HttpTransport()}, policy=RetryPolicy(max_attempts=1), breaker_threshold=2,
                              breaker_cooldown_s=30.0, clock=lambda: now[0])
        for n in range(2):
            await executors.run(contract, step(n))
        assert executors.breaker("cart-0").state == "open"
        now[0] = 30.0  # the cooldown is over, on the injected clock
        assert executors.breaker("cart-0").state == "half_open"
        assert (await executors.run(contract, step(5))).ok
        assert executors.breaker("cart-0").state == "closed"
    finally:
        hook.close()


async def test_a_reply_lost_to_a_nats_restart_is_asked_for_again_at_once(tmp_path, restart_contract):
    """The server restarts while the target works: rtem resends on reconnect (same idempotency key)
    instead of waiting out the contract's 120 s, and the target applies the step once."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    rtem = agent = None
    try:
        rtem = await Bus.connect(server.url)
        agent = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        target = LosesFirstReply()
        await target.attach(agent)
        await agent.flush()
        executors = Executors({"nats": NatsTransport(rtem)},
                              policy=RetryPolicy(max_attempts=20, initial_interval_s=0.1, max_interval_s=0.5))
        running = asyncio.ensure_future(executors.run(restart_contract, step()))
        await asyncio.wait_for(target.lost.wait(), 10)
        server.kill()
        server.start()  # on the same port: both clients reconnect
        outcome = await asyncio.wait_for(running, 20)  # the contract's timeout is 120 s
        assert restart_contract.timeout_s >= 60
        assert outcome.ok, outcome
        assert [request["idempotency_key"] for request in target.requests] == ["inc-1/0/do"] * len(target.requests)
        assert len(target.requests) >= 2 and len(target.applied) == 1
    finally:
        for connection in (agent, rtem and rtem.nc):
            if connection is not None:
                await connection.close()
        server.cleanup()


async def test_commands_run_only_from_the_allowlist_and_never_through_a_shell(restart_contract, tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "restart.sh"
    script.write_text(f"#!/bin/sh\necho \"$1 $RTEM_IDEMPOTENCY_KEY\" > {marker}\n")
    script.chmod(0o755)
    contract = restart_contract.model_copy(
        update={"executor": CommandExecutor(argv=(str(script), "{target}; rm -rf /"))})
    refused = await Executors({"command": CommandTransport([])}, policy=FAST).run(contract, step())
    assert not refused.ok and "allowlist" in refused.error and not marker.exists()
    allowed = await Executors({"command": CommandTransport([str(script)])}, policy=FAST).run(contract, step())
    assert allowed.ok
    assert marker.read_text().strip() == "cart-0; rm -rf / inc-1/0/do", "the argument stayed one argument"


def settings(tmp_path, nats_server):
    return Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, diagnose_after_s=5, verify_quiet_s=30)


SERVICE_CPU = [anomaly(f"c{i}", f"cartservice-{i % 3}", i) for i in range(12)]


async def test_a_step_that_fails_for_good_compensates_the_completed_ones(tmp_path, nats_server, bus, boutique):
    target = Target(fail={"shed_load"})
    await target.attach(bus.nc)
    service = await Service(settings(tmp_path, nats_server), boutique, poll_s=0.05).start()
    try:
        await publish(bus, SERVICE_CPU)  # a service-wide CPU fault: scale_out, then shed_load
        row = await wait_for(lambda: (rows := service.parts.store.incidents()) and rows[0]["status"] == "escalated"
                             and rows[0], 30)
        statuses = {a["type"]: a["status"] for a in row["actions"]}
        assert statuses["scale_out"] == "compensated" and statuses["shed_load"] == "failed"
        applied = [(key.rsplit("/", 1)[1], action) for key, action, _ in target.applied]
        assert applied == [("do", "scale_out"), ("compensate", "scale_out")]
        kinds = [r.kind for r in service.parts.audit.records(incident_id=row["id"])]
        assert "action.compensated" in kinds and "compensated" in row["resolution"]
        # the page went out first, and the escalation paged again with the reason
        assert statuses["notify_oncall"] == "done"
        [paged] = service.parts.audit.records(incident_id=row["id"], kind="incident.paged")
        assert paged.decision["paged"] and "shed_load" in paged.inputs["summary"]
        assert [p["params"]["summary"] for p in service.pages][-1].startswith(f"rtem escalated incident {row['id']}")
        assert all(a["status_reason"] for a in row["actions"] if a["status"] == "skipped")
    finally:
        await service.stop()


async def test_dry_run_records_what_would_happen_and_runs_nothing(tmp_path, nats_server, bus, boutique):
    target = Target()
    await target.attach(bus.nc)
    service = await Service(settings(tmp_path, nats_server), boutique, dry_run=True, poll_s=0.05).start()
    try:
        await publish(bus, SERVICE_CPU)
        row = await wait_for(lambda: (rows := service.parts.store.incidents()) and rows[0]["status"] == "diagnosed"
                             and rows[0], 30)
        assert row["actions"] and all(a["verdict"] for a in row["actions"])
        assert target.requests == [] and service.pages == []
    finally:
        await service.stop()
