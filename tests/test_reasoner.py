"""The deterministic reasoner on small hand-built incidents, on recorded cases, and against its contracts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent.models import RootCause
from agent.reasoner import ACTION_TYPES, FAULT_TYPES, DeterministicReasoner, unlisted, unlisted_note
from agent.reasoner._catalog import is_bad_direction, metric_domain, metric_kind
from agent.reasoner._signals import SEVERITY_WEIGHT, extract_signals
from bus._envelope import parse_event
from rules.topology import Topology
from tests.helpers import Events

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Online-Boutique-cloudbed-2"


def diagnose(events: Events, topology: Topology, limit: int = 5) -> list[RootCause]:
    return DeterministicReasoner().rank(events.events, topology, limit=limit)


def rank_of(causes: list[RootCause], entity: str) -> int:
    return next(i for i, c in enumerate(causes) if c.entity == entity)


# -- ranking ---------------------------------------------------------------------------------------


def test_host_with_several_anomalous_instances_ranks_first(shop):
    ev = Events()
    ev.metric("host-a", "system.mem.used")
    for resident in ("frontend-0", "cart-0"):
        ev.metric(resident, "container_threads", at=60)
        ev.metric(resident, "container_network_receive_MB.eth0", at=60)
        ev.metric(resident, "container_fs_writes./dev/vda", at=60)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "host-a"
    assert causes[0].fault_type == "memory"
    assert "of its instances are anomalous" in causes[0].explanation


def test_host_anomaly_shared_with_the_container_that_causes_it(shop):
    ev = Events()
    ev.metric("host-c", "system.io.r_s")
    for metric in ("container_fs_reads./dev/vda", "container_cpu_usage_seconds", "container_memory_usage_MB"):
        ev.metric("checkout-1", metric)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "checkout-1"
    assert causes[0].fault_type == "disk_io"
    host = causes[rank_of(causes, "host-c")]
    assert "checkout-1" in host.explanation


def test_callee_with_errors_seen_by_callers_outranks_them(shop):
    ev = Events()
    ev.metric("frontend", "http-sr", direction="down")
    ev.metric("frontend", "http-mrt", at=0)
    ev.metric("checkout", "grpc-sr", at=0, direction="down")
    ev.metric("cart", "grpc-sr", at=120, direction="down")
    ev.metric("cart", "grpc-mrt", at=120)
    for caller, callee in (("frontend-0", "cart-0"), ("frontend-1", "cart-1"), ("checkout-0", "cart-0"),
                           ("checkout-1", "cart-1")):
        ev.trace(caller, callee, at=30, anomaly="500")
    causes = diagnose(ev, shop)
    assert shop.matches(causes[0].entity, "cart")
    assert all(rank_of(causes, c) > 0 for c in ("frontend", "checkout") if any(x.entity == c for x in causes))
    assert causes[0].fault_type in ("errors", "latency")


def test_calls_the_traces_show_stand_in_for_calls_the_topology_does_not_list(shop):
    """A topology of services, instances and hosts alone (no `calls`): the traces say who calls whom, so
    the callers' latency/errors still move to the callee that shows them too, as with the full topology."""
    doc = shop.model_dump()
    bare = Topology.from_dict({**doc, "relations": [r for r in doc["relations"] if r["type"] not in ("calls", "uses")]})
    ev = Events()
    ev.metric("frontend", "http-mrt")
    ev.metric("checkout", "grpc-mrt")
    ev.metric("cart", "grpc-mrt", at=120)
    ev.metric("frontend-1", "container_threads", at=60)
    ev.metric("checkout-0", "container_threads", at=60)
    for caller, callee in (("frontend-0", "cart-0"), ("frontend-1", "cart-1"), ("checkout-0", "cart-1"),
                           ("frontend-0", "checkout-1")):
        ev.trace(caller, callee, at=30)
    ranked = [(c.entity, round(c.confidence, 6)) for c in diagnose(ev, bare, limit=10)]
    assert ranked == [(c.entity, round(c.confidence, 6)) for c in diagnose(ev, shop, limit=10)]
    assert ranked[0][0] == "cart"
    cart = diagnose(ev, bare)[0]
    assert ("latency/errors of its callers (checkout, frontend) point at it (checkout, frontend call it as the "
            "traces show, not the topology)") in cart.explanation
    assert "latency/errors of its callers (checkout, frontend) point at it" in diagnose(ev, shop)[0].explanation


def test_where_a_container_runs_comes_from_its_events_when_the_topology_does_not_say(shop):
    """A topology without `runs_on`: the collector's `host.name` on the container's anomalies says where it
    runs, so the host's anomaly is still shared with the container that causes it, as with the full
    topology; with neither, the host keeps all of it."""
    doc = shop.model_dump()
    bare = Topology.from_dict({**doc, "relations": [r for r in doc["relations"] if r["type"] != "runs_on"]})

    def incident(said: bool) -> Events:
        ev = Events()
        ev.metric("host-c", "system.io.r_s")
        for metric in ("container_fs_reads./dev/vda", "container_cpu_usage_seconds", "container_memory_usage_MB"):
            ev.metric("checkout-1", metric, host="host-c" if said else None)
        return ev

    said, listed = diagnose(incident(True), bare), diagnose(incident(True), shop)
    assert [c.entity for c in said[:2]] == [c.entity for c in listed[:2]] == ["checkout-1", "host-c"]
    host = said[rank_of(said, "host-c")]
    assert "system.io.r_s is matched by checkout-1 on it" in host.explanation
    unsaid = diagnose(incident(False), bare)
    alone = unsaid[rank_of(unsaid, "host-c")]
    assert "matched by" not in alone.explanation and alone.confidence > 2 * host.confidence


def test_isolated_instance_fault_points_at_the_instance(shop):
    ev = Events()
    for metric in ("container_cpu_usage_seconds", "container_memory_usage_MB", "container_threads",
                   "container_fs_writes./dev/vda"):
        ev.metric("checkout-1", metric)
    ev.metric("frontend-0", "container_memory_usage_MB", at=120)
    ev.metric("checkout", "grpc-mrt", at=30)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "checkout-1"
    assert "its service checkout shows latency/errors" in causes[0].explanation
    # one of its two instances anomalous: the service's typical instance (the lower median) is a quiet one,
    # so its slow calls are the faulty instance's and nothing is left to the service as a whole
    assert all(c.entity != "checkout" for c in causes)


def test_service_symptoms_go_to_the_instance_that_stands_out(shop):
    ev = Events()
    ev.metric("cart", "grpc-sr", direction="down")
    ev.metric("cart", "grpc-mrt")
    ev.metric("cart-1", "container_cpu_usage_seconds")
    ev.metric("cart-1", "container_threads")
    ev.metric("cart-0", "container_threads")  # both instances anomalous, one far more
    causes = diagnose(ev, shop)
    assert causes[0].entity == "cart-1"
    assert "its service cart shows latency/errors" in causes[0].explanation
    assert "unevenly anomalous" in causes[rank_of(causes, "cart")].explanation


def test_every_instance_of_a_service_anomalous_points_at_the_service(shop):
    ev = Events()
    for instance in ("cart-0", "cart-1"):
        ev.metric(instance, "container_network_receive_packets.eth0", direction="down")
        ev.metric(instance, "container_cpu_usage_seconds", at=30)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "cart"
    assert causes[0].fault_type == "network"
    assert {c.entity for c in causes[1:3]} == {"cart-0", "cart-1"}


def test_earlier_anomalies_outweigh_more_numerous_later_ones(shop):
    ev = Events()
    ev.metric("checkout-0", "container_cpu_usage_seconds", at=0)
    ev.metric("checkout-0", "container_memory_usage_MB", at=0)
    for metric in ("container_cpu_usage_seconds", "container_memory_usage_MB", "container_threads"):
        ev.metric("frontend-1", metric, at=1200)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "checkout-0"
    assert rank_of(causes, "checkout-0") < rank_of(causes, "frontend-1")


def test_a_rising_success_rate_is_not_an_anomaly(shop):
    ev = Events()
    ev.metric("cart", "grpc-sr", direction="up")
    ev.metric("frontend", "http-mrt", direction="down")
    assert diagnose(ev, shop) == []


def test_deployment_followed_by_errors_is_the_cause(shop):
    ev = Events()
    ev.other("rtem.change.deploy", "checkout", at=0, message="checkout v2.3.1 rolled out")
    ev.metric("checkout", "grpc-sr", at=60, direction="down")
    ev.metric("frontend", "http-sr", at=60, direction="down")
    ev.metric("cart-1", "container_memory_usage_MB", at=90)
    causes = diagnose(ev, shop)
    assert causes[0].entity == "checkout"
    assert causes[0].fault_type == "bad_deploy"
    assert causes[0].evidence[0] == ev.events[0].id


def test_only_topology_entities_are_candidates(shop):
    ev = Events()
    for metric in ("container_cpu_usage_seconds", "container_memory_usage_MB", "container_threads"):
        ev.metric("ghost-7", metric)
    ev.trace("ghost-7", "cart-0", at=10)
    ev.trace("frontend-0", "ghost-8", at=10)
    ev.metric("cart-1", "container_cpu_usage_seconds", at=20)
    causes = diagnose(ev, shop)
    assert causes
    assert all(c.entity in shop for c in causes)


def test_quiet_incidents_have_no_cause(shop):
    ev = Events()
    assert diagnose(ev, shop) == []
    ev.other("rtem.log", "cart-0", severity="info", message="request served in 12 ms")
    assert diagnose(ev, shop) == []


def test_a_log_counts_by_its_level_from_warning_up_and_by_its_words_below(shop):
    """Warnings are evidence like errors, weighed by how rare they are; an info line counts only when its
    own words say something failed, as many programs log failures at info level."""
    def signals(severity: str, message: str):
        return extract_signals([Events().other("rtem.log", "cart-0", severity=severity, message=message)], shop)

    assert [s.weight for s in signals("warning", "slow request")] == [SEVERITY_WEIGHT["warning"]]
    assert signals("info", "request served") == []
    for message in ("login failed for user bob", "open /data/x: permission denied",
                    "java.lang.NullPointerException at Cart.add", "upstream timed out"):
        assert [s.weight for s in signals("info", message)] == [SEVERITY_WEIGHT["warning"]], message
    assert [s.weight for s in signals("error", "login failed")] == [SEVERITY_WEIGHT["error"]]


def test_a_failure_logged_at_info_level_names_its_entity(shop):
    ev = Events()
    for at, instance in enumerate(("cart-0", "cart-1", "checkout-0", "checkout-1")):
        ev.other("rtem.log", instance, at=at, severity="info", message=f"request {at} served in {at + 3} ms")
    ev.other("rtem.log", "cart-1", at=9, severity="info", message="access to /var/cart denied: permission denied")
    causes = diagnose(ev, shop)
    assert causes[0].entity == "cart-1"


def test_logs_alerts_and_health_checks_count(shop):
    ev = Events()
    ev.other("rtem.health", "cart-1", severity="critical", message="liveness probe failed")
    ev.other("rtem.log", "cart-1", at=5, severity="error", message="java.lang.OutOfMemoryError: Java heap space")
    ev.other("rtem.alert", "frontend", at=60, severity="warning", message="HighLatency")
    ev.other("some.vendor.event", "checkout", at=90, severity="warning", message="something odd")
    causes = diagnose(ev, shop)
    assert causes[0].entity == "cart-1"
    assert causes[0].fault_type in ("process", "memory")


def test_an_exhausted_connection_pool_is_named_as_such_and_fails_the_database_over(shop):
    """Connections at their limit and "pool exhausted" errors of the database's users are neither a process
    fault nor the network's: the fault type says connections, and the remedy is the database's."""
    ev = Events()
    ev.metric("orders-db", "connections_in_use", severity="error")
    ev.metric("orders-db", "query_latency_ms", at=5)
    for at, instance in enumerate(("checkout-0", "checkout-1")):
        ev.other("rtem.log", instance, at=10 + at, severity="error",
                 message="could not acquire a connection to orders-db: pool exhausted (100/100 in use)")
        ev.trace(instance, "orders-db", at=12 + at, anomaly="500")
    causes = diagnose(ev, shop)
    assert (causes[0].entity, causes[0].fault_type) == ("orders-db", "connections")
    assert "connections exhausted" in causes[0].explanation
    assert [p.type for p in DeterministicReasoner().remedies(causes, shop, ev.events)][0] == "failover_database"


# -- contracts of the answer -----------------------------------------------------------------------


@pytest.fixture
def busy_incident(shop) -> Events:
    rng = random.Random(7)
    ev = Events()
    instances = [e.id for e in shop.entities if e.type == "instance"]
    metrics = ["container_cpu_usage_seconds", "container_memory_usage_MB", "container_threads",
               "container_fs_reads./dev/vda", "container_network_receive_MB.eth0"]
    for _ in range(300):
        kind = rng.random()
        if kind < 0.5:
            ev.metric(rng.choice(instances), rng.choice(metrics), at=rng.uniform(0, 600))
        elif kind < 0.6:
            host = rng.choice(["host-a", "host-b", "host-c"])
            ev.metric(host, rng.choice(["system.cpu.pct_usage", "system.io.w_s"]), at=rng.uniform(0, 600))
        elif kind < 0.7:
            ev.metric(rng.choice(["frontend", "cart", "checkout"]), rng.choice(["grpc-mrt", "grpc-sr"]),
                      at=rng.uniform(0, 600), direction=rng.choice(["up", "down"]))
        else:
            caller, callee = rng.sample(instances, 2)
            ev.trace(caller, callee, at=rng.uniform(0, 600), anomaly=rng.choice(["PD", "PD", "500"]))
    return ev


def test_confidences_are_probabilities_in_rank_order(shop, busy_incident):
    causes = diagnose(busy_incident, shop, limit=50)
    assert len(causes) > 5
    confidences = [c.confidence for c in causes]
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert sum(confidences) <= 1.0 + 1e-4 * len(confidences)  # each is rounded to 4 places
    assert confidences == sorted(confidences, reverse=True)
    assert all(c.fault_type in FAULT_TYPES for c in causes)


def test_evidence_names_real_events_strongest_first(shop, busy_incident):
    ids = {e.id for e in busy_incident.events}
    causes = diagnose(busy_incident, shop)
    for cause in causes:
        assert cause.evidence, cause.entity
        assert set(cause.evidence) <= ids
        assert len(cause.evidence) == len(set(cause.evidence)) <= 20
        assert cause.entity in cause.explanation


def test_limit_and_determinism(shop, busy_incident):
    first = diagnose(busy_incident, shop, limit=3)
    assert len(first) == 3
    shuffled = list(busy_incident.events)
    random.Random(1).shuffle(shuffled)
    again = DeterministicReasoner().rank(shuffled, shop, limit=3)
    assert [c.model_dump() for c in again] == [c.model_dump() for c in first]
    assert DeterministicReasoner().rank(busy_incident.events, shop, limit=0) == []


def test_ten_thousand_events_take_well_under_a_second(shop):
    rng = random.Random(3)
    ev = Events()
    instances = [e.id for e in shop.entities if e.type == "instance"]
    for n in range(10_000):
        if n % 2:
            ev.metric(rng.choice(instances), f"container_metric_{n % 40}", at=rng.uniform(0, 3600))
        else:
            caller, callee = rng.sample(instances, 2)
            ev.trace(caller, callee, at=rng.uniform(0, 3600))
    causes = diagnose(ev, shop)  # its speed is measured by benchmarks/rca_accuracy.py, not asserted here
    assert causes and all(c.entity in shop for c in causes)


# -- proposals -------------------------------------------------------------------------------------


def _check_proposals(proposals, cause: str, topology: Topology) -> None:
    assert 2 <= len(proposals) <= 3
    assert proposals[-1].type == "notify_oncall"
    assert isinstance(proposals[-1].params["summary"], str) and proposals[-1].params["summary"]
    reach = topology.blast_radius([cause])
    for p in proposals:
        assert p.type in ACTION_TYPES
        assert p.target in reach, (p.type, p.target)
        assert p.cause == cause and p.proposed_by == "deterministic" and p.reason
        if p.type == "scale_out":
            assert isinstance(p.params["replicas"], int) and 1 <= p.params["replicas"] <= 20
        if p.type == "shed_load":
            assert isinstance(p.params["percent"], int) and 1 <= p.params["percent"] <= 90
        if p.type == "open_circuit":
            assert p.target in topology.targets(p.params["from"], "calls")
        if p.type in ("restart_instance", "drain_host", "failover_database"):
            assert topology.entity_type(p.target) == {"restart_instance": "instance", "drain_host": "host",
                                                      "failover_database": "database"}[p.type]
        if p.type in ("scale_out", "shed_load", "open_circuit", "rollback_deploy"):
            assert topology.entity_type(p.target) == "service"


@pytest.mark.parametrize("entity, fault_type, expected", [
    ("cart-0", "cpu", "restart_instance"),
    ("cart-0", "memory", "restart_instance"),
    ("host-b", "disk_io", "drain_host"),
    ("orders-db", "latency", "failover_database"),
    ("checkout", "cpu", "scale_out"),
    ("cart", "errors", "open_circuit"),
    ("redis", "memory", "restart_instance"),
])
def test_proposals_follow_the_catalog(shop, entity, fault_type, expected):
    cause = RootCause(entity=entity, fault_type=fault_type, confidence=0.7)
    proposals = DeterministicReasoner().remedies([cause], shop)
    assert proposals[0].type == expected
    _check_proposals(proposals, entity, shop)


def test_rollback_needs_a_deployment(shop):
    reasoner = DeterministicReasoner()
    cause = RootCause(entity="checkout", fault_type="bad_deploy", confidence=0.8)
    ev = Events()
    ev.metric("checkout", "grpc-sr", direction="down")
    assert all(p.type != "rollback_deploy" for p in reasoner.remedies([cause], shop, ev.events))
    ev.other("rtem.change.deploy", "checkout-1", at=-60)
    proposals = reasoner.remedies([cause], shop, ev.events)
    assert proposals[0].type == "rollback_deploy" and proposals[0].target == "checkout"
    _check_proposals(proposals, "checkout", shop)


def test_proposals_for_diagnosed_incidents_stay_in_bounds(shop, busy_incident):
    reasoner = DeterministicReasoner()
    causes = reasoner.rank(busy_incident.events, shop)
    _check_proposals(reasoner.remedies(causes, shop, busy_incident.events), causes[0].entity, shop)
    assert reasoner.remedies([], shop) == []


# -- the signal catalog ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric, domain", [
    ("container_cpu_usage_seconds", "cpu"), ("system.cpu.pct_usage", "cpu"),
    ("container_memory_usage_MB", "memory"), ("system.mem.used", "memory"),
    ("container_fs_reads./dev/vda", "disk_io"), ("system.io.w_s", "disk_io"),
    ("system.disk.used", "disk_space"), ("system.disk.pct_usage", "disk_space"),
    ("container_network_receive_packets.eth0", "network"), ("container_threads", "process"),
    ("grpc-mrt", "latency"), ("http-sr", "errors"), ("grpc-rr", "traffic"), ("frobnication_index", "unknown"),
    # names as other collectors write them (Metricbeat, node_exporter, cAdvisor)
    ("system_core_iowait_pct", "disk_io"), ("docker_cpu_core_7_pct", "cpu"), ("docker_memory_stats_rss", "memory"),
    ("docker_diskio_write_bytes", "disk_io"), ("system_filesystem_used_pct", "disk_space"),
    ("node_network_transmit_errs_total", "network"), ("container_fs_usage_bytes", "disk_space"),
])
def test_metric_domains(metric, domain):
    assert metric_domain(metric) == domain


def test_metric_kind_drops_the_device_and_direction_matters():
    assert metric_kind("container_fs_reads./dev/vda") == "container_fs_reads"
    assert metric_kind("container_network_receive_MB.eth0") == "container_network_receive_MB"
    assert not is_bad_direction("grpc-sr", "errors", "up") and is_bad_direction("grpc-sr", "errors", "down")
    assert is_bad_direction("grpc-mrt", "latency", "up") and not is_bad_direction("grpc-mrt", "latency", "down")
    assert is_bad_direction("container_cpu_usage_seconds", "cpu", "down")


# -- recorded cases --------------------------------------------------------------------------------


@pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded cases not found at {DATA}")
def test_recorded_cases_mostly_rank_the_truth_in_the_top_three():
    topology = Topology.load(DATA / "topology.json")
    reasoner = DeterministicReasoner()
    numbers = range(0, 78, 3)  # every third case: a spread over the recording, not a picked set
    top1 = top3 = 0
    for number in numbers:
        events = [parse_event(line) for line in (DATA / "cases" / f"{number}.events.jsonl").read_text().splitlines()
                  if line.strip()]
        truth = json.loads((DATA / "cases" / f"{number}.truth.json").read_text())["root_cause_entity"]
        ranked = [c.entity for c in reasoner.rank(events, topology, limit=3)]
        top1 += bool(ranked) and topology.matches(ranked[0], truth)
        top3 += any(topology.matches(entity, truth) for entity in ranked)
    # On these 26 cases, ranking entities by their number of metric anomalies gets 8 first and 12 in the
    # top 3; the reasoner must do clearly better on both.
    assert top3 >= 16, f"truth in the top 3 for only {top3} of {len(numbers)} cases"
    assert top1 >= 12, f"truth ranked first for only {top1} of {len(numbers)} cases"


def test_the_note_on_entities_the_topology_does_not_hold(shop):
    assert unlisted(["cart-0", "host-a", "frontend"], shop) == [] and unlisted_note([]) is None
    assert unlisted(["pod-2", "cart-0", "pod-1", "pod-2"], shop) == ["pod-1", "pod-2"]
    assert unlisted_note(unlisted(["cart-0", "cart-9"], shop)) == (
        "1 entity of this incident is not in the topology, so its events were not weighed and it cannot be "
        "ranked as the cause: cart-9; add it to the topology (`rtem topology check FILE --events RECORDING` "
        "lists what recordings name that it lacks)")
    many = unlisted_note(unlisted([f"pod-{n}" for n in range(7)] + ["cart-0"], shop), shown=3)
    assert many.startswith("7 entities of this incident are not in the topology, so their events were not weighed "
                           "and none can be ranked as the cause: pod-0, pod-1, pod-2 and 4 more; add them")
