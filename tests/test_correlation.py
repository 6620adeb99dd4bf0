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


def test_signals_redelivered_after_their_incident_closed_join_it_across_a_restart(tmp_path, boutique):
    """The chaos benchmark's duplicated incident. A SIGKILL loses the batch rtem held unacked (the
    fault's later anomalies); the restarted rtem consumes the newer backlog first, and event time moves
    on far enough that the incident is remediated, verified and closed before the ack wait brings the
    lost batch back. Those anomalies are the same fault, observed before it closed: they must join its
    incident, not open a second one that is remediated again."""
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4)])
    lost = [ev(f"a{i}", "cartservice-0", i) for i in range(4, 8)]  # in flight when rtem was killed
    store.close()
    tri, store = triage(tmp_path, boutique)  # the restarted process
    tri.handle([ev(f"s{i}", "emailservice-0", 8 + i, severity="info") for i in range(60)])
    [incident] = incidents(store)
    store.set_status(incident, "resolved")  # what the service loop does when the thread resolves it
    tri.correlator.release(incident)
    result = tri.handle(lost)  # redelivered after the ack wait
    assert result.opened == []
    assert list(incidents(store)) == [incident], "one fault, one incident"
    row = store.incident(incident)
    assert row["status"] == "resolved" and row["event_count"] == 8
    assert {e.id for e in store.events(incident)} == {f"a{i}" for i in range(8)}


def test_a_fault_redelivered_in_two_batches_long_after_newer_events_is_one_incident(tmp_path, boutique):
    """A killed leader held a whole fault; its standby consumed events 2,000 s newer first, and the fault
    came back after the ack wait in two batches a moment apart. The first opens an incident that is quiet
    at once by the watermark (released); the second must still find it, not open a second incident."""
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev(f"c{i}", "currencyservice-0", 2000 + i) for i in range(4)])
    first = tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4)])
    assert len(first.opened) == 1
    second = tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4, 8)])
    assert second.opened == [], "the rest of the fault joins the incident its first batch opened"
    [cart] = [i for i in incidents(store) if store.incident(i)["event_count"] == 8]
    assert {e.id for e in store.events(cart)} == {f"a{i}" for i in range(8)}
    tri.handle([ev("later", "emailservice-0", 2000 + 1000, severity="info")])  # event time goes on past it
    assert tri.handle([ev("a8", "cartservice-0", 8)]).opened, "forgotten once lateness has passed its close"


def test_late_signals_join_a_closed_incident_after_a_restart_too(tmp_path, boutique):
    """The same, when the lost batch comes back only after a second restart: which incidents were
    closed, and at what event time, is part of the state that survives a restart."""
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4)])
    tri.handle([ev(f"s{i}", "emailservice-0", 8 + i, severity="info") for i in range(60)])
    [incident] = incidents(store)
    store.set_status(incident, "resolved")
    tri.correlator.release(incident)
    tri.handle([ev("s-next", "emailservice-0", 70, severity="info")])
    store.close()
    tri, store = triage(tmp_path, boutique)
    assert tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4, 8)]).opened == []
    assert list(incidents(store)) == [incident] and store.incident(incident)["event_count"] == 8


def a_resolved_incident(tmp_path, boutique):
    """Triage, its store, and an incident of four cart anomalies that the service loop resolved."""
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev(f"a{i}", "cartservice-0", i) for i in range(4)] +
               [ev("s", "emailservice-0", 30, severity="info")])
    [incident] = incidents(store)
    store.set_status(incident, "resolved")
    tri.correlator.release(incident)
    return tri, store, incident


def test_a_closed_incident_takes_no_signal_observed_after_it_closed(tmp_path, boutique):
    """The fault coming back after its remediation is a new incident, even inside the time gap."""
    tri, store, incident = a_resolved_incident(tmp_path, boutique)
    result = tri.handle([ev("again", "cartservice-0", 40)])
    assert len(result.opened) == 1 and result.opened[0] != incident
    assert store.incident(incident)["event_count"] == 4


def test_an_incident_closed_just_before_a_kill_stays_closed_after_the_restart(tmp_path, boutique):
    """The service loop closes an incident between batches; the correlator state that the next batch
    would have saved without it is lost with the process. Restored from the older state, the closed
    incident must not swallow the fault's recurrence: that would be recorded in a resolved incident,
    which nothing handles."""
    tri, store, incident = a_resolved_incident(tmp_path, boutique)
    store.close()  # SIGKILL before the next batch commits
    tri, store = triage(tmp_path, boutique)
    result = tri.handle([ev("again", "cartservice-0", 40)])
    assert len(result.opened) == 1 and result.opened[0] != incident
    assert store.incident(incident)["event_count"] == 4


def test_a_leader_taking_over_restores_the_saved_state_not_what_it_held(tmp_path, boutique):
    """`rtem run` restores triage each time a worker becomes the leader; what another leader changed in
    between (here: the incident went quiet and was released) wins over what this worker still held."""
    tri, store = triage(tmp_path, boutique)
    tri.handle([ev("a", "cartservice-0", 0)])
    other, _ = triage(tmp_path, boutique)  # the other worker, leading meanwhile
    other.handle([ev("s", "emailservice-0", 700, severity="info")])  # two gaps later: quiet, released
    assert not other.correlator.open
    tri.restore()
    assert not tri.correlator.open, "the incident the other leader released is held open again"


def test_a_failed_batch_leaves_no_trace_in_event_time_or_incidents(tmp_path, boutique):
    """A batch whose transaction fails (the database went away) was still seen by the detector and the
    correlator in memory. Its events come back, but until then event time must stay where the store has it:
    an incident judged ready on the failed batch's later events closed before its own late events were
    recorded, and they opened a second incident (seen after a PostgreSQL restart under three workers)."""
    from agent.cluster import Fenced

    store = IncidentStore(tmp_path / "rtem.db")
    failing = {"next": False}

    def fence(_conn):
        if failing["next"]:
            failing["next"] = False
            raise Fenced("the database went away")
    tri = Triage(store, Detector(load_detections(), boutique), Correlator(boutique, gap_s=300), fence=fence)
    first = [ev(f"a{i}", "cartservice-0", i, metric="container_cpu_usage_seconds") for i in range(5)]
    later = [ev(f"a{i}", "cartservice-0", i, metric="container_cpu_usage_seconds") for i in range(5, 10)]
    elsewhere = [ev(f"b{i}", "currencyservice-0", 400 + i, metric="container_cpu_usage_seconds") for i in range(5)]
    tri.handle(first)
    committed = tri.watermark
    failing["next"] = True
    try:
        tri.handle(later + elsewhere)
    except Fenced:
        pass
    else:
        raise AssertionError("the batch should have failed")
    assert tri.watermark == committed, "event time stays where the last committed batch left it"
    tri.handle(elsewhere)  # redelivered out of order: the other fault's events first
    tri.handle(later)
    by_subject = {}
    for row in store.incidents():
        by_subject.setdefault(tuple(row["entities"]), []).append(row["event_count"])
    assert sorted(sum(by_subject.values(), [])) == [5, 10], by_subject
    assert store.event_count() == 15
