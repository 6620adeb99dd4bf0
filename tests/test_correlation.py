"""Correlation through the triage path (real SQLite): storms, simultaneous faults, merges, replays."""

from datetime import datetime, timedelta, timezone

from bus import Event
from rules import Correlator, Detector, load_detections
from agent.store import IncidentStore
from agent.triage import Triage

T0 = datetime(2022, 3, 20, 1, 0, tzinfo=timezone.utc)


def ev(event_id, subject, seconds, *, type="rtem.metric.anomaly", severity="warning", **attributes):
    return Event(id=event_id, source="/tests", type=type, time=T0 + timedelta(seconds=seconds), subject=subject,
                 severity=severity, attributes=attributes)


def triage(tmp_path, topology, name="rtem.db"):
    store = IncidentStore(tmp_path / name)
    return Triage(store, Detector(load_detections(), topology), Correlator(topology, gap_s=300)), store


def incidents(store):
    return {row["id"]: row for row in store.incidents()}


def test_an_alert_storm_from_one_fault_is_one_incident(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    callers = ["frontend-0", "frontend-1", "checkoutservice-0", "checkoutservice-2"]
    storm = []
    for i in range(10_000):
        if i % 3 == 0:
            storm.append(ev(f"s{i}", f"cartservice-{i % 3}", i * 0.05, metric="container_cpu_usage_seconds"))
        else:
            storm.append(ev(f"s{i}", f"cartservice-{i % 3}", i * 0.05, type="rtem.trace.anomaly",
                            caller=callers[i % 4], callee=f"cartservice-{i % 3}", anomaly="PD"))
    for start in range(0, len(storm), 256):
        tri.handle(storm[start:start + 256])
    [incident] = incidents(store).values()
    assert incident["event_count"] == 10_000
    assert set(incident["entities"]) == {"cartservice-0", "cartservice-1", "cartservice-2"}


def test_two_unrelated_faults_at_the_same_time_are_two_incidents(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    batch = []
    for i in range(50):
        batch.append(ev(f"a{i}", "redis-cart-0", i, metric="memory"))
        batch.append(ev(f"b{i}", "productcatalogservice-1", i, metric="cpu"))
    tri.handle(batch)
    found = incidents(store)
    assert len(found) == 2
    assert sorted(sorted(row["entities"]) for row in found.values()) == [["productcatalogservice-1"], ["redis-cart-0"]]
    assert all(row["event_count"] == 50 for row in found.values())


def test_the_same_fault_later_than_the_gap_is_a_new_incident(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0), ev("b", "cartservice-0", 10)])
    tri.handle([ev("c", "cartservice-0", 10 + 301)])
    assert len(incidents(store)) == 2


def test_a_signal_that_links_two_incidents_merges_them_into_the_oldest(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0), ev("b", "productcatalogservice-1", 5)])
    assert len(incidents(store)) == 2
    # checkoutservice calls cartservice and productcatalogservice: its anomaly links both faults.
    result = tri.handle([ev("c", "checkoutservice", 20)])
    found = incidents(store)
    assert len(found) == 1 and len(result.merged) == 1
    [keeper] = found.values()
    assert keeper["event_count"] == 3
    absorbed = result.merged[0][0]
    assert store.incident(absorbed)["status"] == "merged" and store.incident(absorbed)["merged_into"] == keeper["id"]


def test_an_entity_the_topology_cannot_place_joins_the_incident_of_its_time(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(5)] + [ev("b", "productcatalogservice-1", 1)])
    # node-4 runs nothing the topology knows of; "mystery" is not in the topology at all.
    tri.handle([ev("h", "node-4", 30), ev("m", "mystery", 31)])
    found = incidents(store)
    assert len(found) == 2, "an unplaceable entity never merges incidents"
    largest = max(found.values(), key=lambda r: r["event_count"])
    assert {"node-4", "mystery"} <= set(largest["entities"])


def test_context_events_join_the_incident_of_their_subject(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0), ev("i", "cartservice-0", 5, severity="info"),
                ev("o", "emailservice-0", 6, severity="info")])
    [incident] = incidents(store).values()
    assert incident["event_count"] == 2
    assert [e.id for e in store.events(incident["id"])] == ["a", "i"]


def test_redelivered_events_are_recorded_once(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    batch = [ev(f"e{i}", "cartservice-0", i) for i in range(10)]
    tri.handle(batch)
    tri.handle(batch[5:] + batch[5:])
    assert store.event_count() == 10 and tri.stats.duplicates == 10
    [incident] = incidents(store).values()
    assert incident["event_count"] == 10


def test_incident_state_survives_a_restart(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0)])
    store.close()
    tri2, store2 = triage(tmp_path, boutique)
    tri2.handle([ev("b", "cartservice-1", 60)])
    [incident] = incidents(store2).values()
    assert incident["event_count"] == 2, "the restarted pipeline kept correlating into the open incident"


def test_an_incident_that_opens_and_goes_quiet_within_one_batch_is_recorded(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    # One batch: a fault, then events two gaps later that make the first incident quiet (released).
    tri.handle([ev("a", "cartservice-0", 0), ev("b", "cartservice-0", 30), ev("c", "emailservice-0", 700)])
    found = incidents(store)
    assert len(found) == 2
    assert sorted(row["event_count"] for row in found.values()) == [1, 2]


def test_event_counts_follow_context_events_and_merges_across_batches(tmp_path, boutique):
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0)])
    tri.handle([ev("i", "cartservice-0", 5, severity="info")])  # context only: no signal
    [incident] = incidents(store).values()
    assert incident["event_count"] == 2
    tri.handle([ev("b", "productcatalogservice-1", 6), ev("c", "productcatalogservice-1", 7)])
    tri.handle([ev("d", "checkoutservice", 20)])  # links both: one incident of five events
    [merged] = incidents(store).values()
    assert merged["event_count"] == 5 == len(store.events(merged["id"]))
