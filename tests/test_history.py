"""Background noise learned from earlier incidents: what is discounted, when, and from which incidents."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from agent.audit import AuditLog
from agent.graph import Deps
from agent.graph import diagnose as diagnose_node
from agent.graph import propose as propose_node
from agent.learning import LearningCache
from agent.models import ReasonerRun
from agent.reasoner import (
    MIN_HISTORY,
    DeterministicReasoner,
    History,
    history_from_events,
    learn_history,
)
from agent.ruleset import FixedRules
from agent.topology_reload import FixedTopology
from agent.store import IncidentStore, event_row
from bus._envelope import Event
from rules import Topology
from tests.helpers import T0, Events

NOISE = ("container_memory_usage_MB", "container_threads", "container_cpu_usage_seconds")
HOUR = 3600.0


def noisy(ev: Events, at: float = 0) -> None:
    """checkout-0's habitual anomalies: three kinds at once, which inside one incident look like a fault."""
    for metric in NOISE:
        ev.metric("checkout-0", metric, at=at)


def current_incident(at: float = 100 * HOUR) -> Events:
    """The noise again, plus a real but single-metric fault on cart-1."""
    ev = Events()
    noisy(ev, at=at)
    ev.metric("cart-1", "container_fs_writes./dev/vda", at=at + 30)
    return ev


def earlier(count: int, with_noise: int | None = None) -> dict[str, list[Event]]:
    """`count` earlier incidents an hour apart, the first `with_noise` of them (default all) with the noise,
    each also with an unrelated fault of its own."""
    with_noise = count if with_noise is None else with_noise
    past = {}
    for n in range(count):
        ev = Events()
        if n < with_noise:
            noisy(ev, at=n * HOUR)
        ev.metric("frontend-1" if n % 2 else "redis-0", "container_network_receive_MB.eth0", at=n * HOUR + 10)
        past[f"inc-{n}"] = [e.model_copy(update={"id": f"p{n}-{e.id}"}) for e in ev.events]
    return past


def ranked(events: Events, topology, history: History | None = None) -> list[str]:
    return [c.entity for c in DeterministicReasoner().rank(events.events, topology, limit=5, history=history)]


def start(events: Events) -> float:
    return min(e.ts for e in events.events)


# -- the discount ----------------------------------------------------------------------------------


def test_recurring_noise_is_discounted_and_the_real_fault_found(shop):
    now = current_incident()
    assert ranked(now, shop)[0] == "checkout-0", "without history the noise looks like the fault"
    history = history_from_events(earlier(8), shop, start(now))
    assert history.incidents == 8
    causes = DeterministicReasoner().rank(now.events, shop, history=history)
    assert causes[0].entity == "cart-1"
    noise = next(c for c in causes if c.entity == "checkout-0")
    assert "container_memory_usage_MB up on checkout-0 appears in 8 of 8 earlier incidents" in noise.explanation
    assert "discounted" in noise.explanation and "discounted" not in causes[0].explanation


def without_checkout_0(shop) -> Topology:
    """The shop's topology from before a rollout renamed checkout-0: it does not list it."""
    doc = shop.model_dump()
    return Topology.from_dict({"entities": [e for e in doc["entities"] if e["id"] != "checkout-0"],
                               "relations": [r for r in doc["relations"]
                                             if "checkout-0" not in (r["source"], r["target"])]})


def said(events: list[Event], attribute: str = "service.name") -> list[Event]:
    """checkout-0's events as an OpenTelemetry collector sends them: with its `service.name` (or the
    Kubernetes workload that owns it, as the k8s attributes processor adds it)."""
    return [e.model_copy(update={"attributes": {**e.attributes, attribute: "checkout"}})
            if e.subject == "checkout-0" else e for e in events]


def test_a_pod_the_topology_lacks_has_a_past_when_its_events_say_its_service(shop):
    """checkout-0 left out of the topology (a rollout renamed it since): its events' `service.name` makes it
    an instance of checkout in earlier incidents too, so its habitual noise is discounted as before."""
    stale = without_checkout_0(shop)
    now = current_incident()
    now.events = said(now.events)
    history = history_from_events({i: said(events) for i, events in earlier(8).items()}, stale, start(now))
    assert ranked(now, stale)[0] == "checkout-0", "without history the noise looks like the fault"
    causes = DeterministicReasoner().rank(now.events, stale, history=history)
    assert causes[0].entity == "cart-1"
    noise = next(c for c in causes if c.entity == "checkout-0")
    assert "container_memory_usage_MB up on checkout-0 appears in 8 of 8 earlier incidents" in noise.explanation


def test_noise_seen_in_few_earlier_incidents_is_barely_discounted(shop):
    now = current_incident()
    history = history_from_events(earlier(8, with_noise=1), shop, start(now))
    assert ranked(now, shop, history)[0] == "checkout-0"


def test_no_effect_below_the_minimum_history(shop):
    now = current_incident()
    history = history_from_events(earlier(MIN_HISTORY - 1), shop, start(now))
    assert history.incidents == MIN_HISTORY - 1 and not history.active
    plain = DeterministicReasoner().rank(now.events, shop)
    assert DeterministicReasoner().rank(now.events, shop, history=history) == plain
    assert DeterministicReasoner().rank(now.events, shop, history=History()) == plain


def test_a_new_kind_of_signal_on_a_usually_noisy_entity_is_still_found(shop):
    now = Events()
    noisy(now, at=100 * HOUR)
    now.metric("checkout-0", "container_fs_writes./dev/vda", at=100 * HOUR + 10)  # never seen before
    now.metric("cart-1", "container_network_receive_MB.eth0", at=100 * HOUR + 30)
    history = history_from_events(earlier(8), shop, start(now))
    causes = DeterministicReasoner().rank(now.events, shop, history=history)
    assert causes[0].entity == "checkout-0" and causes[0].fault_type == "disk_io"


def test_a_new_direction_is_a_new_kind(shop):
    now = Events()
    now.metric("checkout-0", "container_memory_usage_MB", at=100 * HOUR, direction="down")  # it always rose
    now.metric("cart-1", "container_threads", at=100 * HOUR + 600)
    history = history_from_events(earlier(8), shop, start(now))
    causes = DeterministicReasoner().rank(now.events, shop, history=history)
    assert causes == DeterministicReasoner().rank(now.events, shop)
    assert causes[0].entity == "checkout-0" and "discounted" not in causes[0].explanation


def test_a_change_is_never_discounted(shop):
    past = {}
    for n in range(8):
        ev = Events()
        ev.other("rtem.change.deploy", "checkout", at=n * HOUR)
        past[f"inc-{n}"] = [e.model_copy(update={"id": f"p{n}-{e.id}"}) for e in ev.events]
    now = Events()
    now.other("rtem.change.deploy", "checkout", at=100 * HOUR)
    now.metric("checkout-1", "container_cpu_usage_seconds", at=100 * HOUR + 60)
    history = history_from_events(past, shop, start(now))
    assert history.incidents == 8 and not history.seen
    assert ranked(now, shop, history) == ranked(now, shop)


# -- no leakage ------------------------------------------------------------------------------------


def test_history_counts_only_what_happened_before_the_current_incident(shop):
    now = current_incident(at=5.5 * HOUR)
    past = earlier(12)  # incidents at hours 0..11: only hours 0..5 are before the current one
    history = history_from_events(past, shop, start(now))
    assert history.incidents == 6
    assert history.seen[("checkout-0", "container_memory_usage_MB", "up")] == 6


def write_incident(store: IncidentStore, incident_id: str, events: list[Event]) -> None:
    with store.transaction():
        store.insert_events([event_row(e, incident_id, [], "2024-01-01T00:00:00Z") for e in events])
        store.upsert_incident({"id": incident_id, "first_ts": min(e.ts for e in events),
                               "last_ts": max(e.ts for e in events), "severity": "warning",
                               "entities": sorted({e.subject for e in events}), "detections": ["t"],
                               "signals": len(events)})


def stored(backend: str, now_at: float) -> tuple[IncidentStore, dict[str, list[Event]], Events]:
    """A store with eight earlier incidents an hour apart (`earlier`) and the current one (`inc-now`)."""
    store = IncidentStore(backend)
    past = earlier(8)
    for incident_id, events in past.items():
        write_incident(store, incident_id, events)
    now = current_incident(at=now_at)
    write_incident(store, "inc-now", now.events)
    return store, past, now


def test_the_store_gives_only_earlier_incidents_and_their_earlier_events(backend, shop):
    store, past, now = stored(backend, now_at=5.5 * HOUR)
    # inc-2 goes on after the current incident started: that later event must not count.
    late = Event(id="late", source="/t", type="rtem.metric.anomaly", time=T0 + timedelta(hours=6),
                 subject="cart-0", severity="warning", attributes={"metric": "container_threads", "direction": "up"})
    write_incident(store, "inc-2", [*past["inc-2"], late])

    incidents, shapes = store.past_event_shapes(start(now), exclude="inc-now")
    assert sorted(incidents) == [f"inc-{n}" for n in range(6)]
    assert all(set(ids) <= set(incidents) for _, ids in shapes)
    assert not any(shape.subject == "cart-0" for shape, _ in shapes)
    history = learn_history(incidents, shapes, shop)
    assert history == history_from_events({i: past[i] for i in incidents}, shop, start(now))
    assert history.seen[("checkout-0", "container_threads", "up")] == 6
    # Identical events of one incident are one shape; the window keeps the most recent incidents.
    assert len([s for s, _ in shapes if s.subject == "checkout-0"]) == len(NOISE)
    assert store.past_event_shapes(start(now), limit=2)[0] == ["inc-5", "inc-4"]
    assert store.past_event_shapes(T0.timestamp()) == ([], [])
    store.close()


def test_the_stores_event_shapes_keep_what_describes_a_pod(backend, shop):
    """The history a diagnosis reads from the store (its distinct event shapes) keeps what says a pod's
    service (here its Kubernetes deployment), so a pod the topology lacks has the same past there as in its
    events."""
    store = IncidentStore(backend)
    past = {i: said(events, "k8s.deployment.name") for i, events in earlier(6).items()}
    for incident_id, events in past.items():
        write_incident(store, incident_id, events)
    now = current_incident(at=7 * HOUR)
    incidents, shapes = store.past_event_shapes(start(now))
    stale = without_checkout_0(shop)
    assert learn_history(incidents, shapes, stale) == history_from_events(past, stale, start(now))
    assert learn_history(incidents, shapes, stale).seen[("checkout-0", "container_threads", "up")] == 6
    store.close()


# -- the graph -------------------------------------------------------------------------------------


class PlainReasoner:
    """A reasoner that ignores the history its view carries."""

    name, version = "plain", "1"

    def diagnose(self, view, limit=5):
        return DeterministicReasoner().rank(view.events, view.topology, limit), ReasonerRun(reasoner=self.name)


def node_deps(store: IncidentStore, reasoner, topology) -> Deps:
    """What the graph gives its nodes, over the store's own database: the nodes run as plain functions."""
    return Deps(store=store, audit=AuditLog(store.path), reasoner=reasoner, rules=FixedRules.load(None),
                topologies=FixedTopology(topology))


def run_diagnose(store: IncidentStore, reasoner, topology) -> tuple[list[dict], dict]:
    deps = node_deps(store, reasoner, topology)
    state = {"incident": {"id": "inc-now", "entities": ["cart-1", "checkout-0"]}}
    out = diagnose_node(state, SimpleNamespace(context=deps))
    record = deps.audit.records(kind="causes.ranked")[-1]
    deps.audit.close()
    deps.rules.close()
    return out["root_causes"], record


def test_the_diagnose_node_learns_from_the_store(tmp_path, shop):
    store = IncidentStore(tmp_path / "rtem.db")
    for incident_id, events in earlier(8).items():
        write_incident(store, incident_id, events)
    write_incident(store, "inc-now", current_incident().events)
    causes, record = run_diagnose(store, DeterministicReasoner(), shop)
    assert causes[0]["entity"] == "cart-1"
    assert record.inputs["earlier_incidents"] == 8
    causes, record = run_diagnose(store, PlainReasoner(), shop)
    # every reasoner is offered the same view; one that ignores the history ranks without it
    assert causes[0]["entity"] == "checkout-0" and record.inputs["earlier_incidents"] == 8
    store.close()


class RecordingReasoner:
    """Deterministic, but remembers the views it was shown."""

    name, version = "recording", "1"

    def __init__(self) -> None:
        self.views = []

    def diagnose(self, view, limit=5):
        self.views.append(("diagnose", view))
        return DeterministicReasoner().diagnose(view, limit)

    def propose(self, view, causes, diagnosis=None):
        self.views.append(("propose", view))
        return DeterministicReasoner().propose(view, causes, diagnosis)


def test_propose_sees_the_same_view_of_the_incident_as_diagnose(tmp_path, shop):
    """Defect: the graph called propose(causes, topology) without the incident's events, so remedies
    that pick an instance or the busiest caller fell back to the alphabetically first one."""
    store = IncidentStore(tmp_path / "rtem.db")
    for incident_id, events in earlier(8).items():
        write_incident(store, incident_id, events)
    now = current_incident().events
    write_incident(store, "inc-now", now)
    reasoner = RecordingReasoner()
    deps = node_deps(store, reasoner, shop)
    state = {"incident": {"id": "inc-now", "entities": ["cart-1", "checkout-0"]}}
    state.update(diagnose_node(state, SimpleNamespace(context=deps)))
    propose_node(state, SimpleNamespace(context=deps))
    (_, seen_by_diagnose), (step, seen_by_propose) = reasoner.views
    assert step == "propose" and {e.id for e in seen_by_propose.events} == {e.id for e in now}
    assert seen_by_propose.history is not None and seen_by_propose.history.incidents == 8
    assert [e.id for e in seen_by_propose.events] == [e.id for e in seen_by_diagnose.events]
    deps.audit.close()
    deps.rules.close()
    store.close()


def test_shapes_with_one_message_are_kinds_by_who_logged_who_called_and_which_way(shop):
    """Shapes with one message that differ only in who logged it, who called or which way a metric moved
    are different signal kinds."""
    def event(n: int, type_: str, subject: str, **attributes) -> Event:
        return Event(id=f"s{n}", source="/t", type=type_, time=T0 + timedelta(seconds=n), subject=subject,
                     severity="warning", message="the same words", attributes=attributes)

    events = [event(0, "rtem.log", "cart-0"), event(1, "rtem.log", "cart-1"), event(2, "rtem.log", "checkout-0"),
              event(3, "rtem.trace.anomaly", "cart-0", caller="frontend-0", callee="cart-0", anomaly="PD"),
              event(4, "rtem.trace.anomaly", "cart-0", caller="frontend-1", callee="cart-0", anomaly="PD"),
              event(5, "rtem.metric.anomaly", "cart-1", metric="container_threads", direction="up"),
              event(6, "rtem.metric.anomaly", "cart-1", metric="container_threads", direction="down")]
    shapes = [(e, (f"inc-{n % 2}",)) for n, e in enumerate(events)]
    history = learn_history(["inc-0", "inc-1"], shapes, shop)
    assert len(history.seen) == 7  # three entities' line, two callers, two directions
    assert history.incidents == 2 and set(history.seen.values()) == {1}


def test_the_learning_cache_remembers_each_earlier_incident_until_its_events_change(backend, shop):
    """`LearningCache.history` gives the history the store's shapes give, reads an earlier incident once
    (what it remembers is keyed by the incident's count and latest time of events read), and reads it again
    when an event joins it."""
    store, past, now = stored(backend, now_at=10 * HOUR)
    before = start(now)
    cache = LearningCache()

    def plain() -> History:
        return learn_history(*store.past_event_shapes(before, exclude="inc-now"), shop)

    first = cache.history(store, shop, before, "inc-now")
    assert first == plain() == history_from_events(past, shop, before)
    assert first.seen[("checkout-0", "container_threads", "up")] == 8
    # Events never change in place; changing one here shows what is remembered: inc-3's count and latest
    # time are as they were, so its kinds are not read again.
    with store.transaction():
        store.db.connection().execute("UPDATE events SET attributes = ? WHERE incident_id = ? AND subject = ?",
                                      ['{"metric": "disk_used", "direction": "up"}', "inc-3", "checkout-0"])
    assert cache.history(store, shop, before, "inc-now") == first != plain()
    assert LearningCache().history(store, shop, before, "inc-now") == plain()
    # An event joining inc-3 changes its fingerprint: it is read again, with the change above.
    joined = Event(id="joined", source="/t", type="rtem.metric.anomaly", time=T0 + timedelta(hours=3, minutes=5),
                   subject="redis-0", severity="warning", attributes={"metric": "container_threads", "direction": "up"})
    write_incident(store, "inc-3", [*past["inc-3"], joined])
    assert cache.history(store, shop, before, "inc-now") == plain()
    assert plain().seen[("redis-0", "container_threads", "up")] == 1
    store.close()


def test_the_learning_cache_forgets_the_kinds_only_forgotten_incidents_showed(backend, shop):
    """The cache's table of signal kinds shrinks with the incidents it remembers: six incidents with a kind
    each, two remembered, two kinds held (an unbounded cache holds all six); histories are unchanged."""
    store = IncidentStore(backend)
    for n in range(6):
        write_incident(store, f"inc-{n}", [
            Event(id=f"k{n}", source="/t", type="rtem.metric.anomaly", time=T0 + timedelta(hours=n),
                  subject="cart-0", severity="warning", attributes={"metric": f"metric_{n}", "direction": "up"})])
    before = T0.timestamp() + 10 * HOUR
    small, whole = LearningCache(incidents=2), LearningCache()
    expected = whole.history(store, shop, before, None)
    assert whole.kinds_held == 6 and expected.incidents == 6
    for _ in range(3):  # each time four incidents are read again and forgotten again
        assert small.history(store, shop, before, None) == expected
        assert small.kinds_held == 2
    store.close()
