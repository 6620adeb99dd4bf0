"""Guardrail gates: rate limits and caps over a window (also across a restart), time windows, state preconditions."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.action_history import HISTORY_SCHEMA, DbActionHistory
from agent.config import Settings
from agent.db import ReadOnlyStoreError, StoreClosedError, versions
from agent.service import build
from agent.store import IncidentStore, event_row
from agent.system_state import StoreState
from bus import Event
from rules import Guard, Proposal, RulesError, Topology, load_contracts, load_guardrails
from rules._gates import MemoryHistory, RecordedAction, StaticState

T0 = datetime(2024, 3, 20, 12, 0, tzinfo=timezone.utc)  # a Wednesday

TOPOLOGY = Topology.from_dict({
    "entities": [{"id": "cart", "type": "service"}, *({"id": f"cart-{i}", "type": "instance"} for i in range(4)),
                 {"id": "web", "type": "service"}, {"id": "web-0", "type": "instance"},
                 {"id": "orders-db", "type": "database"}],
    "relations": [*({"source": f"cart-{i}", "target": "cart", "type": "instance_of"} for i in range(4)),
                  {"source": "web-0", "target": "web", "type": "instance_of"},
                  {"source": "cart", "target": "orders-db", "type": "uses"}],
})


def rules(tmp_path: Path, text: str) -> Guard:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n" + text, "utf-8")
    return Guard(load_guardrails(path), load_contracts())


def judge(guard: Guard, action: str, target: str, at: datetime, **kwargs):
    params = {"replicas": 2} if action == "scale_out" else {}
    return guard.evaluate(Proposal(type=action, target=target, params=params), topology=TOPOLOGY,
                          incident_entities=[target], incident_id="inc-1", incident_severity="error", at=at, **kwargs)


def run(guard: Guard, history, steps):
    """Propose each (minutes after T0, action, target); record the allowed ones; return the outcomes."""
    outcomes = []
    for minute, action, target in steps:
        at = T0 + timedelta(minutes=minute)
        verdict = judge(guard, action, target, at, history=history)
        if verdict.outcome == "allow":
            history.record(action, target, at, incident_id="inc-1")
        outcomes.append(verdict.outcome)
    return outcomes


LIMIT = """\
  - id: two-restarts-an-hour
    match: {action: restart_instance}
    limit: {max: 2, window: 1h}
    outcome: deny
    reason: Two restarts of one instance an hour at most.
"""


# -- limits ------------------------------------------------------------------------------------------

def test_a_limit_counts_earlier_actions_on_the_same_target_within_the_window(tmp_path):
    guard = rules(tmp_path, LIMIT)
    history = MemoryHistory()
    outcomes = run(guard, history, [(0, "restart_instance", "cart-0"), (10, "restart_instance", "cart-0"),
                                    (20, "restart_instance", "cart-0"),   # third within the hour: denied
                                    (20, "restart_instance", "cart-1"),   # another target has its own count
                                    (59, "restart_instance", "cart-0"),   # 0 and 10 still in (−1 min, 59]
                                    (60, "restart_instance", "cart-0"),   # the window is (0, 60]: 0 has left it
                                    (61, "restart_instance", "cart-0")])  # 10 and 60 in the window
    assert outcomes == ["allow", "allow", "deny", "allow", "deny", "allow", "deny"]
    denied = judge(guard, "restart_instance", "cart-0", T0 + timedelta(minutes=61), history=history)
    assert denied.rules == ["two-restarts-an-hour"]
    assert "2 earlier restart_instance on cart-0 within 1h; at most 2 allowed" in denied.reason


def test_a_limit_per_service_and_per_any_target(tmp_path):
    guard = rules(tmp_path, """\
  - id: three-per-service
    match: {action: restart_instance}
    limit: {max: 3, window: 10m, per: service}
    outcome: require_approval
    reason: r
  - id: four-anywhere
    match: {action: restart_instance}
    limit: {max: 4, window: 10m, per: any}
    outcome: deny
    reason: r
""")
    history = MemoryHistory()
    outcomes = run(guard, history, [(0, "restart_instance", "cart-0"), (1, "restart_instance", "cart-1"),
                                    (2, "restart_instance", "cart-2"), (3, "restart_instance", "cart-3"),
                                    (3, "restart_instance", "web-0"), (4, "scale_out", "web")])
    # cart-3 is the fourth restart in cart; web-0 is the fourth restart anywhere (cart-3 was not allowed)
    assert outcomes == ["allow", "allow", "allow", "require_approval", "allow", "allow"]
    assert judge(guard, "restart_instance", "web-0", T0 + timedelta(minutes=5), history=history).rules == [
        "four-anywhere"]


def test_a_cap_limits_the_share_of_a_services_instances(tmp_path):
    guard = rules(tmp_path, """\
  - id: half-of-a-service
    match: {action: restart_instance}
    cap: {percent: 50, window: 30m}
    outcome: deny
    reason: r
""")
    history = MemoryHistory()
    outcomes = run(guard, history, [(0, "restart_instance", "cart-0"), (1, "restart_instance", "cart-1"),
                                    (2, "restart_instance", "cart-1"),   # the same instance again: still 2 of 4
                                    (3, "restart_instance", "cart-2"),   # 3 of 4: over half
                                    (31, "restart_instance", "cart-2"),  # cart-0 left the window
                                    (32, "restart_instance", "web-0")])  # web's only instance: 100%
    assert outcomes == ["allow", "allow", "allow", "deny", "allow", "deny"]
    # at 31 minutes the window (1, 31] holds cart-1 (2) and cart-2 (31); cart-3 would be the third of four
    verdict = judge(guard, "restart_instance", "cart-3", T0 + timedelta(minutes=31), history=history)
    assert "restart_instance on 3 of 4 cart instances within 30m (75%, at most 50%)" in verdict.reason


def test_only_recorded_actions_count_and_without_a_history_none_do(tmp_path):
    guard = rules(tmp_path, LIMIT)
    assert judge(guard, "restart_instance", "cart-0", T0).outcome == "allow"  # no history: nothing counted
    earlier = MemoryHistory([RecordedAction(T0 - timedelta(minutes=m), "restart_instance", "cart-0") for m in (5, 6)])
    assert judge(guard, "restart_instance", "cart-0", T0, history=earlier).outcome == "deny"
    assert judge(guard.bind(history=earlier), "restart_instance", "cart-0", T0).outcome == "deny"


# -- across a restart: the history lives in the database ---------------------------------------------------

def test_limits_survive_a_service_restart(tmp_path):
    rules_dir = tmp_path / "rules"
    (rules_dir / "guardrails").mkdir(parents=True)
    (rules_dir / "guardrails" / "limits.yaml").write_text("version: 1\nrules:\n" + LIMIT, "utf-8")
    settings = Settings(data_dir=tmp_path / "data", rules_dir=rules_dir)
    (rules_dir / "contracts").symlink_to(Path(load_contracts()["scale_out"].source).parent)
    (rules_dir / "detect").symlink_to(Path(load_contracts()["scale_out"].source).parent.parent / "detect")

    async def session(steps):
        parts = build(settings, TOPOLOGY)
        try:
            guard = parts.rules.current().guard
            assert isinstance(guard.history, DbActionHistory)
            return run(guard, guard.history, steps)
        finally:
            await parts.close()

    assert asyncio.run(session([(0, "restart_instance", "cart-0"), (10, "restart_instance", "cart-0")])) == [
        "allow", "allow"]
    # a new process: the two restarts are still counted, until they leave the window
    assert asyncio.run(session([(20, "restart_instance", "cart-0"), (61, "restart_instance", "cart-0")])) == [
        "deny", "allow"]
    history = DbActionHistory(tmp_path / "data" / "rtem.db")
    try:
        assert len(history) == 3 and history.watermark() >= 3
        window = dict(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=2))
        assert history.count("restart_instance", **window, targets={"cart-0"}) == 3
        assert history.as_of(2).count("restart_instance", **window) == 2
        assert history.as_of(before=T0 + timedelta(minutes=10)).count("restart_instance", **window) == 1
    finally:
        history.close()


def test_a_recorded_key_is_counted_once(backend):
    store = IncidentStore(backend)
    try:
        history = DbActionHistory(store)
        assert history.record("restart_instance", "cart-0", T0, key="inc-1#0@t")
        assert not history.record("restart_instance", "cart-0", T0, key="inc-1#0@t")
        assert history.count("restart_instance", since=T0 - timedelta(minutes=1), until=T0) == 1
        assert history.targets("restart_instance", since=T0 - timedelta(minutes=1), until=T0, among=set()) == set()
    finally:
        store.close()


def test_the_history_and_its_views_on_either_backend(backend):
    history = DbActionHistory(backend)
    try:
        assert versions(history.db)["action_history"] == HISTORY_SCHEMA.version
        for minute, target, incident_id in ((0, "cart-0", "inc-1"), (10, "cart-1", "inc-2"), (20, "cart-0", None)):
            history.record("restart_instance", target, T0 + timedelta(minutes=minute), incident_id=incident_id)
        window = dict(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
        assert len(history) == 3 and history.watermark() == 3
        assert history.count("restart_instance", **window) == 3 and history.count("scale_out", **window) == 0
        assert history.targets("restart_instance", **window, among={"cart-0", "web-0"}) == {"cart-0"}
        assert history.excluding("inc-1").count("restart_instance", **window) == 2  # rows of no incident count
        assert len(history.as_of(2)) == 2 and history.as_of(2).count("restart_instance", **window) == 2
        assert history.as_of(before=T0 + timedelta(minutes=10)).count("restart_instance", **window) == 1
        history.as_of(1).close()  # a view does not close the history
        assert history.watermark() == 3
    finally:
        history.close()
    with pytest.raises(StoreClosedError):
        history.watermark()


def test_on_a_read_only_store_the_history_reads_and_refuses_to_record(backend):
    with_history = IncidentStore(backend)
    DbActionHistory(with_history).record("restart_instance", "cart-0", T0)
    with_history.close()
    store = IncidentStore(backend, readonly=True)
    try:
        history = DbActionHistory(store)
        assert history.db.readonly and history.watermark() == 1
        with pytest.raises(ReadOnlyStoreError):
            history.record("restart_instance", "cart-0", T0)
    finally:
        store.close()


def test_a_rerun_of_the_guard_node_is_judged_as_the_first_run(tmp_path):
    """Defect (chaos suite): after a kill the incident's thread re-ran `guard` with a later updated_at; its
    own first allowance was counted against it under a second key, and a restart it had been allowed now
    waited for a person. Its own actions do not count; other incidents' do."""
    from types import SimpleNamespace

    from agent.graph import guard as guard_node

    rules_dir = tmp_path / "rules"
    (rules_dir / "guardrails").mkdir(parents=True)
    (rules_dir / "guardrails" / "limits.yaml").write_text(
        "version: 1\nrules:\n" + LIMIT.replace("max: 2", "max: 1"), "utf-8")
    (rules_dir / "contracts").symlink_to(Path(load_contracts()["scale_out"].source).parent)
    (rules_dir / "detect").symlink_to(Path(load_contracts()["scale_out"].source).parent.parent / "detect")
    parts = build(Settings(data_dir=tmp_path / "data", rules_dir=rules_dir), TOPOLOGY, dry_run=False)
    try:
        proposal = Proposal(type="restart_instance", target="cart-0").model_dump()

        def judged(incident_id: str, minute: int) -> list[str]:
            incident = {"id": incident_id, "entities": ["cart-0"], "severity": "error",
                        "updated_at": (T0 + timedelta(minutes=minute)).isoformat()}
            out = guard_node({"incident": incident, "proposals": [proposal]},
                             SimpleNamespace(context=parts.graph.deps))
            return [a["verdict"] for a in out["actions"]]

        assert judged("inc-1", 0) == ["allow"]
        assert judged("inc-1", 5) == ["allow"], "the re-run is not held back by its own allowance"
        history = parts.rules.current().guard.history
        assert history.count("restart_instance", since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1)) == 1
        assert judged("inc-2", 10) == ["deny"], "another incident still counts it"
    finally:
        asyncio.run(parts.close())


# -- time windows ------------------------------------------------------------------------------------

WINDOWS = """\
  - id: year-end-freeze
    match: {action: {ne: notify_oncall}}
    during: [{from: "2024-12-20", to: "2025-01-02T00:00:00Z"}]
    outcome: deny
    reason: Change freeze.
  - id: nights-need-approval
    match: {action: scale_out}
    during: [{from: "22:00", to: "06:00"}]
    outcome: require_approval
    reason: Nobody watches at night.
  - id: drains-only-in-maint
    match: {action: drain_host}
    outside: [{days: [sun], from: "02:00", to: "05:00", timezone: Europe/Berlin}]
    outcome: deny
    reason: Hosts are drained only in the Sunday maintenance window.
"""


@pytest.mark.parametrize("at, action, expected", [
    (datetime(2024, 12, 24, 10, tzinfo=timezone.utc), "scale_out", ["year-end-freeze"]),
    (datetime(2025, 1, 2, 10, tzinfo=timezone.utc), "scale_out", []),                        # the end is exclusive
    (datetime(2024, 12, 24, 10, tzinfo=timezone.utc), "notify_oncall", []),
    (datetime(2024, 3, 20, 23, 30, tzinfo=timezone.utc), "scale_out", ["nights-need-approval"]),
    (datetime(2024, 3, 21, 5, 59, tzinfo=timezone.utc), "scale_out", ["nights-need-approval"]),  # after midnight
    (datetime(2024, 3, 21, 6, 0, tzinfo=timezone.utc), "scale_out", []),
    (datetime(2024, 3, 24, 1, 30, tzinfo=timezone.utc), "drain_host", ["contract.approval"]),  # 02:30 in Berlin
    (datetime(2024, 3, 24, 4, 30, tzinfo=timezone.utc), "drain_host", ["contract.approval", "drains-only-in-maint"]),
    (datetime(2024, 3, 20, 2, 30, tzinfo=timezone.utc), "drain_host", ["contract.approval", "drains-only-in-maint"]),
])
def test_freezes_and_maintenance_windows_use_event_time(tmp_path, at, action, expected):
    guard = rules(tmp_path, WINDOWS)
    topology = Topology.from_dict({"entities": [{"id": "web", "type": "service"}, {"id": "node-1", "type": "host"}]})
    target = "node-1" if action == "drain_host" else "web"
    params = {"scale_out": {"replicas": 2}, "notify_oncall": {"summary": "s"}}.get(action, {})
    verdict = guard.evaluate(Proposal(type=action, target=target, params=params), topology=topology,
                             incident_entities=[target], incident_id="inc-1", incident_severity="error", at=at)
    assert verdict.rules == expected
    if "year-end-freeze" in expected:
        assert "during 2024-12-20–2025-01-02T00:00:00Z UTC" in verdict.reason


@pytest.mark.parametrize("window, points_at, message", [
    ('{from: 22:00, to: "06:00"}', "from", "quote times of day"),
    ('{from: "25:00", to: "06:00"}', "from", "'25:00' is not a time of day"),
    ('{from: "06:00", to: "06:00"}', "to", "the window is empty"),
    ('{from: "2024-12-20", to: "2024-12-01"}', "to", "the window ends before it starts"),
    ('{from: "2024-12-20"}', "{from", "a one-off window needs both"),
    ('{days: [sun], timezone: Mars/Olympus}', "timezone", "unknown time zone 'Mars/Olympus'"),
    ('{days: [sunday]}', "sunday", "'sunday' is not one of"),
])
def test_bad_windows_point_at_the_key(tmp_path, window, points_at, message):
    line = f"    during: [{window}]"
    text = f"  - id: w\n    match: {{action: scale_out}}\n{line}\n    outcome: deny\n    reason: r\n"
    with pytest.raises(RulesError) as caught:
        rules(tmp_path, text)
    assert (caught.value.line, caught.value.column) == (5, line.index(points_at) + 1), str(caught.value)
    assert message in str(caught.value)


# -- state preconditions -----------------------------------------------------------------------------

STATE = """\
  - id: no-failover-while-lagging
    match: {action: failover_database}
    state: {replica_lag_s: {gt: 30}}
    outcome: deny
    reason: The replica is behind.
  - id: failover-blind
    match: {action: failover_database}
    state: {replica_lag_s: {exists: false}}
    outcome: require_approval
    reason: Nobody knows the replica lag.
"""


def test_a_state_precondition_reads_the_targets_latest_observed_state(tmp_path):
    guard = rules(tmp_path, STATE)
    lag = StaticState({"orders-db": {"replica_lag_s": 45}})
    lagging = judge(guard, "failover_database", "orders-db", T0, state=lag)
    assert lagging.outcome == "deny" and "no-failover-while-lagging" in lagging.rules
    assert "state of orders-db: replica_lag_s=45" in lagging.reason
    fine = judge(guard, "failover_database", "orders-db", T0, state=StaticState({"orders-db": {"replica_lag_s": 3}}))
    assert fine.rules == ["contract.approval"]
    unknown = judge(guard, "failover_database", "orders-db", T0)
    assert unknown.rules == ["contract.approval", "failover-blind"]


def test_the_state_comes_from_recent_events_in_the_store(tmp_path):
    store = IncidentStore(tmp_path / "rtem.db")
    try:
        def sample(i: int, minutes: float, **attributes):
            event = Event(id=f"e{i}", source="/t", type="rtem.health", time=T0 + timedelta(minutes=minutes),
                          subject="orders-db", severity="info", message="", attributes=attributes)
            return event_row(event, None, [], T0.isoformat())

        with store.transaction():
            store.insert_events([sample(1, -40, replica_lag_s=90), sample(2, -10, replica_lag_s=50, role="primary"),
                                 sample(3, -5, replica_lag_s=2), sample(4, 5, replica_lag_s=99)])
        state = StoreState(store, max_age_s=15 * 60)
        assert state.latest("orders-db", T0) == {"replica_lag_s": 2, "role": "primary"}  # newest value of each
        assert state.latest("orders-db", T0 - timedelta(minutes=8)) == {"replica_lag_s": 50, "role": "primary"}
        assert state.latest("orders-db", T0 - timedelta(minutes=30)) == {"replica_lag_s": 90}
        assert state.latest("orders-db", T0 - timedelta(hours=2)) == {}
        guard = rules(tmp_path, STATE).bind(state=state)
        assert judge(guard, "failover_database", "orders-db", T0).outcome == "require_approval"
        assert judge(guard, "failover_database", "orders-db", T0 - timedelta(minutes=8)).outcome == "deny"
    finally:
        store.close()
