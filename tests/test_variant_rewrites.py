"""benchmarks/variants.py's collapsed shapes, on a small system of its own (no recorded data needed): each
service keeps one or two instances, each on its first member's host, and every event and the truth follow."""

from __future__ import annotations

from tests.helpers import benchmark

TOPOLOGY = {
    "entities": [{"id": "cart", "type": "service"}, {"id": "web", "type": "service"}]
    + [{"id": f"cart-{n}", "type": "instance"} for n in range(3)] + [{"id": "web-0", "type": "instance"}]
    + [{"id": f"node-{n}", "type": "host"} for n in range(3)],
    "relations": [{"source": "web", "target": "cart", "type": "calls"}]
    + [{"source": f"cart-{n}", "target": "cart", "type": "instance_of"} for n in range(3)]
    + [{"source": f"cart-{n}", "target": f"node-{n}", "type": "runs_on"} for n in range(3)]
    + [{"source": "web-0", "target": "web", "type": "instance_of"},
       {"source": "web-0", "target": "node-0", "type": "runs_on"}],
}
EVENTS = [
    {"type": "rtem.metric.anomaly", "subject": "cart-2", "data": {"attributes": {"metric": "cpu"}}},
    {"type": "rtem.trace.anomaly", "subject": "cart-1",
     "data": {"attributes": {"caller": "web-0", "callee": "cart-1", "anomaly": "PD"}}},
]


def test_two_instances_deals_a_services_instances_into_two():
    variants = benchmark("variants")
    events, topology, truth = variants.two_instances(EVENTS, TOPOLOGY, {"root_cause_entity": "cart-2", "level": "pod"})
    instances = sorted(e["id"] for e in topology["entities"] if e["type"] == "instance")
    assert instances == ["cart-pod0", "cart-pod1", "web-pod0"]
    placed = {(r["source"], r["target"]) for r in topology["relations"] if r["type"] == "runs_on"}
    assert placed == {("cart-pod0", "node-0"), ("cart-pod1", "node-1"), ("web-pod0", "node-0")}
    # cart-0 and cart-2 are dealt into pod0, cart-1 into pod1
    assert [e["subject"] for e in events] == ["cart-pod0", "cart-pod1"]
    assert events[1]["data"]["attributes"] == {"caller": "web-pod0", "callee": "cart-pod1", "anomaly": "PD"}
    assert truth == {"root_cause_entity": "cart-pod0", "level": "pod"}
    assert EVENTS[0]["subject"] == "cart-2", "the recorded events are not changed in place"


def test_one_instance_makes_a_pod_truth_its_service():
    variants = benchmark("variants")
    events, topology, truth = variants.one_instance(EVENTS, TOPOLOGY, {"root_cause_entity": "cart-2", "level": "pod"})
    assert sorted(e["id"] for e in topology["entities"] if e["type"] == "instance") == ["cart-pod", "web-pod"]
    assert {e["subject"] for e in events} == {"cart-pod"}
    assert truth == {"root_cause_entity": "cart", "level": "service"}


def test_call_logs_has_each_caller_log_the_trouble_of_the_service_it_called():
    variants = benchmark("variants")
    own_span = {"type": "rtem.trace.anomaly", "subject": "web-0", "source": "/t",
                "data": {"attributes": {"caller": "web-0", "callee": "web-0", "anomaly": "PD",
                                        "operation": "hipstershop.CartService/GetCart (rpc)"}}}
    failed = {"type": "rtem.trace.anomaly", "subject": "cart-1", "source": "/t",
              "data": {"attributes": {"caller": "web-0", "callee": "cart-1", "anomaly": "500",
                                      "operation": "hipstershop.CartService/AddItem (rpc)"}}}
    events, topology, truth = variants.call_logs([EVENTS[0], {**EVENTS[1], "source": "/t"}, own_span, failed],
                                                 TOPOLOGY, {"root_cause_entity": "cart-2"})
    assert events[0] == EVENTS[0], "metrics are kept"
    logged = [(e["type"], e["subject"], e["data"]["severity"], e["data"]["message"]) for e in events[1:]]
    assert logged == [("rtem.log", "web-0", "warning", "call to cart request took too long"),
                      ("rtem.log", "web-0", "warning", "GetCart took too long"),
                      ("rtem.log", "web-0", "warning", "call to cart AddItem failed with status 500")]
    assert topology is TOPOLOGY and truth == {"root_cause_entity": "cart-2"}


def test_no_service_signals_keeps_only_what_instances_and_hosts_say():
    variants = benchmark("variants")
    about_service = {"type": "rtem.metric.anomaly", "subject": "cart", "data": {"attributes": {"metric": "grpc-mrt"}}}
    about_host = {"type": "rtem.metric.anomaly", "subject": "node-1", "data": {"attributes": {"metric": "cpu"}}}
    events, topology, truth = variants.no_service_signals([about_service, *EVENTS, about_host], TOPOLOGY,
                                                          {"root_cause_entity": "cart"})
    assert events == [*EVENTS, about_host]
    assert topology is TOPOLOGY and truth == {"root_cause_entity": "cart"}


def test_no_calls_and_no_hosts_thin_only_the_topology():
    variants = benchmark("variants")
    truth = {"root_cause_entity": "cart-2", "level": "pod"}
    for rewrite, dropped in ((variants.no_calls, {"calls"}), (variants.no_hosts, {"runs_on"})):
        events, topology, same = rewrite(EVENTS, TOPOLOGY, truth)
        assert events == EVENTS and same == truth and topology["entities"] == TOPOLOGY["entities"]
        assert topology["relations"] == [r for r in TOPOLOGY["relations"] if r["type"] not in dropped]
        assert {r["type"] for r in topology["relations"]} == {"calls", "instance_of", "runs_on"} - dropped


def test_no_hosts_unsaid_also_removes_where_the_events_say_they_run():
    variants = benchmark("variants")
    placed = {"type": "rtem.metric.anomaly", "subject": "cart-2",
              "data": {"severity": "warning", "attributes": {"metric": "cpu", "host.name": "node-2",
                                                              "k8s.node.name": "node-2"}}}
    events, topology, _ = variants.no_hosts_unsaid([placed, *EVENTS], TOPOLOGY, {"root_cause_entity": "cart-2"})
    assert events == [{**placed, "data": {"severity": "warning", "attributes": {"metric": "cpu"}}}, *EVENTS]
    assert "runs_on" not in {r["type"] for r in topology["relations"]}
    assert placed["data"]["attributes"]["host.name"] == "node-2", "the recorded events are not changed in place"


def test_new_pods_leaves_each_services_newest_pod_out_and_has_its_events_say_its_service():
    variants = benchmark("variants")
    trace_to_new = {"type": "rtem.trace.anomaly", "subject": "cart-2",
                    "data": {"attributes": {"caller": "web-0", "callee": "cart-2", "anomaly": "PD"}}}
    truth = {"root_cause_entity": "cart-2", "level": "pod"}
    events, topology, same = variants.new_pods([*EVENTS, trace_to_new], TOPOLOGY, truth)
    assert sorted(e["id"] for e in topology["entities"] if e["type"] == "instance") == ["cart-0", "cart-1"]
    assert not any("cart-2" in (r["source"], r["target"]) or "web-0" in (r["source"], r["target"])
                   for r in topology["relations"])
    assert events[0]["data"]["attributes"] == {"metric": "cpu", "service.name": "cart"}
    assert events[1:] == [EVENTS[1], trace_to_new], "traces say nothing of their callee's service"
    assert same == truth and "service.name" not in EVENTS[0]["data"]["attributes"]
    unsaid, thin, _ = variants.new_pods_unsaid(EVENTS, TOPOLOGY, truth)
    assert unsaid == EVENTS and thin == topology
