"""The demo's simulated system: its telemetry, its faults, and the commands that fix them.

The first tests step the simulation's synchronous core without a broker (fast, exact); the rest run it
against a real nats-server at a high speed factor, as `rtem demo` does.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from agent.demo import (SCENARIOS, TOPOLOGY_PATH, CommandFault, Simulation, bad_deploy, consumer_backlog,
                        demo_plan, host_failure, instance_crash, malformed_burst, settle_subscriptions)
from agent.reasoner import DeterministicReasoner
from bus import InvalidEvent, parse_event, parse_time
from rules import Guard, Topology, load_contracts, load_guardrails

START = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
REMEDIABLE = [name for name, s in SCENARIOS.items() if s.fixes]


def events_of(outgoing) -> list:
    return [parse_event(o.data) for o in outgoing if o.event is not None]


def not_info(events, subject=None) -> list:
    return [e for e in events if e.severity != "info" and (subject is None or e.subject == subject)]


def request(action: str, target: str, key: str, **params) -> dict:
    return {"action": action, "target": target, "params": params, "idempotency_key": key, "incident_id": "inc-test"}


# -- the synchronous core ---------------------------------------------------------------------------


def test_topology_is_rtem_format_with_the_parts_the_demo_needs():
    topology = Topology.load(TOPOLOGY_PATH)
    kinds = {t: [e for e in topology.entities if e.type == t] for t in ("service", "host", "database", "queue")}
    assert len(kinds["service"]) >= 6 and len(kinds["host"]) == 3 and kinds["queue"]
    assert any((e.model_extra or {}).get("replica_of") == "orders-db" for e in kinds["database"])
    assert topology.by_id["gateway"].tier == 1
    assert "orders-queue" in topology.targets("fulfillment", "uses")
    for instance in (e.id for e in topology.entities if e.type == "instance"):
        assert topology.host_of(instance) and topology.service_of(instance) != instance
    sim = Simulation()
    assert sim.topology_path == TOPOLOGY_PATH and Topology.from_dict(sim.topology_dict) == topology


def test_clock_runs_event_time_speed_times_faster_than_the_wall():
    sim = Simulation(speed=20, start=START)
    assert sim.clock.at(90) == START + timedelta(seconds=90)
    assert sim.clock.wall_seconds(90) == 4.5
    first = events_of(sim.advance(0))
    later = events_of(sim.advance(10))
    assert {e.time for e in first} == {START}
    assert {e.time for e in later} == {START + timedelta(seconds=5), START + timedelta(seconds=10)}


def test_every_reporting_entity_sends_health_and_a_sample_each_tick():
    sim = Simulation(start=START)
    events = events_of(sim.advance(0))
    reporters = {e.id for e in sim.topology.entities if e.type in ("instance", "host", "database", "queue")}
    assert {e.subject for e in events if e.type == "rtem.health"} == reporters
    assert {e.subject for e in events if e.type == "rtem.metric.sample"} == reporters
    assert all(e.attributes["status"] == "ok" for e in events if e.type == "rtem.health")
    assert not_info(events) == []
    db = next(e for e in events if e.type == "rtem.metric.sample" and e.subject == "orders-db")
    assert {"connections_in_use", "replica_lag_s", "host.name"} <= db.attributes.keys()


@pytest.mark.parametrize("scenario, faulty, quiet", [
    (bad_deploy(), {"catalog-0", "catalog-1"}, {"auth-0", "auth-1", "orders-db"}),
    (instance_crash("auth-1"), {"auth-1"}, {"auth-0", "catalog-0"}),
    (consumer_backlog(), {"fulfillment-0", "fulfillment-1", "orders-queue"}, {"shipping-0", "orders-0"}),
    (SCENARIOS["db-connection-exhaustion"], {"orders-db", "orders-0", "orders-1"}, {"orders-db-replica"}),
])
def test_a_fault_shows_on_its_entities_and_nowhere_else(scenario, faulty, quiet):
    sim = Simulation(start=START)
    sim.inject(scenario.at(10))
    events = events_of(sim.advance(60))
    assert {e.subject for e in not_info(events)} >= faulty
    assert not {e.subject for e in not_info(events)} & quiet
    failing = {e.subject for e in events if e.type == "rtem.health" and e.attributes["status"] == "failing"}
    assert failing and failing <= faulty, "only the faulty entity itself reports failing health"


def test_a_bad_deploy_announces_itself_before_its_errors():
    sim = Simulation(start=START)
    sim.inject(bad_deploy("catalog", version="3.0.0", previous="2.9.9"))
    events = events_of(sim.advance(60))
    deploy = next(e for e in events if e.type == "rtem.change.deploy")
    assert (deploy.subject, deploy.attributes["version"], deploy.attributes["previous_version"]) == \
        ("catalog", "3.0.0", "2.9.9")
    first_error = min(e.time for e in events if e.severity == "error")
    assert first_error >= deploy.time + timedelta(seconds=20)
    traces = [e for e in events if e.type == "rtem.trace.anomaly"]
    assert {e.attributes["caller"] for e in traces} == {"gateway-0", "gateway-1"}
    assert {e.attributes["anomaly"] for e in traces} == {"500"}


def test_a_host_failure_silences_the_host_and_its_workloads_until_it_is_drained():
    sim = Simulation(start=START, recovery_s=15)
    fault = sim.inject(host_failure("node-3"))
    dark = {"node-3", "auth-1", "catalog-1", "inventory-1"}
    events = events_of(sim.advance(120))
    late = [e for e in events if e.time >= START + timedelta(seconds=10)]
    assert not {e.subject for e in late if e.type == "rtem.health"} & dark
    assert any(e.type == "rtem.trace.anomaly" and e.subject == "catalog-1" for e in late)
    reply = sim.command(request("drain_host", "node-3", "k-drain"))
    assert reply["ok"] and set(reply["result"]["moved"]) == {"auth-1", "catalog-1", "inventory-1"}
    after = events_of(sim.advance(200))
    assert fault.resolved
    healths = {e.subject: e for e in after if e.type == "rtem.health" and e.time > START + timedelta(seconds=150)}
    assert dark <= healths.keys() and all(healths[s].attributes["status"] == "ok" for s in dark)
    assert healths["node-3"].attributes["cordoned"] is True
    assert healths["catalog-1"].attributes["host.name"] != "node-3"


@pytest.mark.parametrize("name", REMEDIABLE)
def test_the_right_fix_ends_every_symptom_after_the_recovery_delay(name):
    sim = Simulation(start=START, recovery_s=15)
    scenario = SCENARIOS[name]
    fault = sim.inject(scenario)
    sim.advance(60)
    fix = scenario.fixes[0]
    params = {"replicas": 3} if fix.action == "scale_out" else {}
    assert sim.command(request(fix.action, fix.target, f"fix-{name}", **params))["ok"]
    assert fault.status == "recovering" and not sim.healthy()
    after = events_of(sim.advance(60 + 15 + 5))
    assert fault.resolved and sim.healthy()
    recovered = [e for e in after if e.time >= START + timedelta(seconds=80)]
    assert recovered and not_info(recovered) == []


def test_scaling_to_no_more_replicas_than_before_fixes_nothing():
    sim = Simulation(start=START)
    fault = sim.inject(consumer_backlog("fulfillment"))
    sim.advance(30)
    assert sim.command(request("scale_out", "fulfillment", "k1", replicas=2))["result"]["changed"] is False
    assert fault.status == "active"
    assert sim.command(request("scale_out", "fulfillment", "k2", replicas=4))["result"]["changed"] is True
    assert fault.status == "recovering"


def test_commands_the_system_cannot_take_are_refused_without_effect():
    sim = Simulation(start=START)
    sim.inject(bad_deploy("catalog"))
    sim.advance(30)
    refused = [
        sim.command(request("rollback_deploy", "catalog", "a", to_version="0.0.1")),
        sim.command(request("failover_database", "orders-db", "b", replica="orders-db")),
        sim.command(request("restart_instance", "catalog", "c")),  # a service is not an instance
        sim.command(request("restart_instance", "nowhere-9", "d")),
        sim.command(request("open_circuit", "catalog", "e", **{"from": "shipping"})),
    ]
    assert [r["ok"] for r in refused] == [False] * 5 and all(r["error"] for r in refused)
    assert sim.applied == []


@pytest.mark.parametrize("name", REMEDIABLE)
def test_rtem_diagnoses_each_scenario_to_its_fix_and_the_guard_says_what_the_scenario_expects(name):
    """The contract between the simulation and rtem: the deterministic reasoner's first proposal for a
    scenario's symptoms is the scenario's fix, and the default guardrails judge it as documented."""
    sim = Simulation(start=START)
    scenario = SCENARIOS[name]
    sim.inject(scenario.at(30))
    events = events_of(sim.advance(150))
    reasoner = DeterministicReasoner()
    causes = reasoner.rank(events, sim.topology)
    proposal = reasoner.remedies(causes, sim.topology, events)[0]
    assert scenario.fixed_by(proposal.type, proposal.target), (causes[0], proposal)
    guard = Guard(load_guardrails(), load_contracts())
    verdict = guard.evaluate(proposal, topology=sim.topology, incident_entities={e.subject for e in not_info(events)},
                             incident_id="inc-test", incident_severity="error", at=START + timedelta(seconds=150))
    assert verdict.outcome == scenario.expected_outcome, verdict.reasons


def test_malformed_records_are_all_refused_by_the_envelope():
    sim = Simulation(start=START)
    sim.inject(malformed_burst(14))
    lines = [o for o in sim.advance(0) if o.event is None]
    assert len(lines) == 14 and {o.subject for o in lines} == {"rtem.events.demo"}
    for line in lines:
        with pytest.raises(InvalidEvent):
            parse_event(line.data)


def test_the_demo_plan_covers_every_scenario_once():
    plan = demo_plan()
    assert sorted(s.name for s in plan) == sorted(SCENARIOS)
    assert {s.expected_outcome for s in plan} == {"allow", "require_approval", None}


# -- against a real nats-server ---------------------------------------------------------------------


class Watcher:
    """Every event the simulation publishes, as the core NATS subscription sees it."""

    def __init__(self):
        self.events = []
        self.raw = []

    async def on_message(self, msg):
        self.raw.append(msg.data)
        try:
            self.events.append(parse_event(msg.data))
        except InvalidEvent:
            pass

    async def until(self, predicate, timeout: float = 5.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the simulation")
            await asyncio.sleep(0.02)


@pytest.fixture
async def running(nats_server, bus):
    """Start a fast simulation (100 event seconds per wall second) with a watcher on its events."""
    started = []

    async def run(*scenarios, **options):
        sim = Simulation(speed=100, start=START, **options)
        for scenario in scenarios:
            sim.inject(scenario)
        watcher = Watcher()
        await bus.nc.subscribe("rtem.events.>", cb=watcher.on_message)
        await settle_subscriptions(bus.nc)  # the watcher sees the very first tick
        await sim.start(nats_server.url)
        started.append(sim)
        return sim, watcher

    yield run
    for sim in started:
        await sim.stop()


async def ask(bus, action: str, target: str, key: str, timeout: float = 2.0, **params) -> dict:
    body = json.dumps(request(action, target, key, **params)).encode()
    msg = await bus.nc.request(f"rtem.cmd.{action}.{target}", body, timeout=timeout,
                               headers={"Rtem-Idempotency-Key": key})
    return json.loads(msg.data)


async def test_published_events_are_valid_stored_and_on_the_sim_clock(running, bus):
    sim, watcher = await running()
    await watcher.until(lambda: len(watcher.events) >= 3 * 22)
    await sim.stop()
    assert len(watcher.events) == len(watcher.raw), "every message is a valid event"
    ids = [e.id for e in watcher.events]
    assert len(set(ids)) == len(ids)
    horizon = START + timedelta(seconds=sim.clock.elapsed() + sim.tick_s)
    assert all(START <= e.time <= horizon for e in watcher.events)
    assert all(e.source.startswith("/demo/") and e.subject in sim.topology for e in watcher.events)
    stored = await bus.js.stream_info("EVENTS")
    assert stored.state.messages == sim.published == len(watcher.events)
    raw = json.loads(watcher.raw[0])
    assert raw["time"].endswith("Z") and parse_time(raw["time"]) == watcher.events[0].time


async def test_a_remediation_request_clears_the_fault_and_health_returns_to_ok(running, bus):
    sim, watcher = await running(instance_crash("auth-1"), recovery_s=15)
    fault = sim.faults[0]
    await watcher.until(lambda: any(e.type == "rtem.metric.anomaly" and e.subject == "auth-1" for e in watcher.events))
    health = [e.attributes["status"] for e in watcher.events if e.type == "rtem.health" and e.subject == "auth-1"]
    assert health[-1] == "failing"
    reply = await ask(bus, "restart_instance", "auth-1", "inc-test:restart:1")
    assert reply == {"ok": True, "error": None, "result": reply["result"]} and fault.status == "recovering"
    await watcher.until(lambda: fault.resolved)
    cleared_at = sim.clock.at(fault.resolved_s)
    await watcher.until(lambda: any(e.time > cleared_at + timedelta(seconds=10) for e in watcher.events))
    after = [e for e in watcher.events if e.time >= cleared_at]
    health = [e.attributes["status"] for e in after if e.type == "rtem.health" and e.subject == "auth-1"]
    assert health[:2] == ["ok", "ok"]
    assert not_info(after) == [] and sim.healthy()


async def test_the_same_idempotency_key_twice_applies_once(running, bus):
    sim, watcher = await running(instance_crash("auth-1"))
    first = await ask(bus, "restart_instance", "auth-1", "inc-test:restart:1")
    again = await ask(bus, "restart_instance", "auth-1", "inc-test:restart:1")
    assert again == first
    assert sim.applied == [("inc-test:restart:1", "restart_instance", "auth-1")]
    assert sim.world.restarts["auth-1"] == 1
    other = await ask(bus, "restart_instance", "auth-1", "inc-test:restart:2")
    assert other["ok"] and len(sim.applied) == 2 and len(sim.commands) == 3


async def test_a_wrong_action_is_applied_but_leaves_the_fault(running, bus):
    sim, watcher = await running(bad_deploy("catalog", errors_after_s=0))
    fault = sim.faults[0]
    wrong = await ask(bus, "restart_instance", "catalog-0", "inc-test:restart:1")
    page = await ask(bus, "notify_oncall", "catalog", "inc-test:notify:1", summary="catalog is failing")
    assert wrong["ok"] and page["ok"] and fault.status == "active"
    seen = len(watcher.events)
    await watcher.until(lambda: len(watcher.events) > seen + 3 * 22)  # three more ticks
    assert fault.status == "active" and not sim.healthy()
    health = [e.attributes["status"] for e in watcher.events if e.type == "rtem.health" and e.subject == "catalog-0"]
    assert health[-1] == "failing"
    assert sim.pages == [{"target": "catalog", "summary": "catalog is failing"}]


async def test_injected_executor_failures_answer_with_an_error_or_not_at_all(running, bus):
    sim, _ = await running(instance_crash("auth-1"), command_faults={"auth-1": CommandFault("error", "ctl down")})
    assert await ask(bus, "restart_instance", "auth-1", "k1") == {"ok": False, "error": "ctl down", "result": {}}
    sim.fail_commands("auth-1", "timeout")
    with pytest.raises(NatsTimeout):
        await ask(bus, "restart_instance", "auth-1", "k2", timeout=0.3)
    assert sim.applied == [] and sim.faults[0].status == "active"
    sim.fail_commands("auth-1", None)
    assert (await ask(bus, "restart_instance", "auth-1", "k3"))["ok"]
    assert sim.faults[0].status == "recovering"


async def test_an_entity_without_that_action_has_no_responder(running, bus):
    await running()
    with pytest.raises(nats.errors.NoRespondersError):
        await ask(bus, "drain_host", "orders-db", "k1")


async def test_a_malformed_burst_resolves_once_rtem_has_dead_lettered_every_record(running, bus):
    sim, watcher = await running(malformed_burst(9))
    fault = sim.faults[0]
    await watcher.until(lambda: len(watcher.raw) > len(watcher.events) and fault.status == "active")
    assert len(watcher.raw) - len(watcher.events) == 9, "none of the records is a valid event"

    async def ignore(events):
        return None

    stop = asyncio.Event()
    consumer = asyncio.create_task(bus.consume(ignore, stop=stop, fetch_timeout=0.1))
    try:
        await watcher.until(lambda: fault.resolved)
    finally:
        stop.set()
        await consumer
    assert len(fault.dead_lettered) == 9 and sim.healthy()
