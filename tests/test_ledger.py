"""The execution ledger, approvals and the kill switch on a real SQLite file and a real PostgreSQL server
(the `backend` fixture): a step recorded once, a decision never overwritten, workers racing on one key."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from agent.db import open_database, versions
from agent.ledger import LEDGER_SCHEMA, Ledger, step_key

AT = datetime(2024, 1, 1, tzinfo=timezone.utc)
WORKERS = 8


@pytest.fixture
def ledger(backend):
    opened = Ledger(backend)
    yield opened
    opened.close()


def start(ledger: Ledger, key: str = "inc-1/0/do", **params) -> dict:
    return ledger.start(key, "inc-1", 0, "do", "restart", "cart-0", params)


def test_a_step_is_recorded_before_its_call_and_never_run_again_once_done(ledger):
    assert ledger.get("inc-1/0/do") is None
    assert start(ledger) == {"key": "inc-1/0/do", "status": "started", "outcome": None, "attempts": 1}
    assert start(ledger)["attempts"] == 2, "rtem died during the call: the step is sent again, counted"
    ledger.finish("inc-1/0/do", True, {"ok": True, "result": "restarted"})
    done = {"key": "inc-1/0/do", "status": "succeeded", "outcome": {"ok": True, "result": "restarted"}, "attempts": 2}
    assert ledger.get("inc-1/0/do") == done
    assert start(ledger) == done, "a step found done is returned as it stands, not counted"


def test_a_failed_step_stays_failed(ledger):
    key = step_key("inc-1", 3, "undo")
    assert key == "inc-1/3/undo"
    start(ledger, key)
    ledger.finish(key, False, {"ok": False, "error": "timeout"})
    assert start(ledger, key) == {"key": key, "status": "failed", "outcome": {"ok": False, "error": "timeout"},
                                  "attempts": 1}


def test_the_first_decision_on_an_action_is_kept(ledger):
    kept = ledger.decide("inc-1", 0, True, "alice", "looks safe", at=AT)
    assert kept is not None and (kept.decision, kept.by, kept.reason, kept.at) == ("approve", "alice", "looks safe", AT)
    assert ledger.decide("inc-1", 0, False, "bob", "no") is None, "a decision is never overwritten"
    assert ledger.decide("inc-1", 1, False, "bob")
    decided = ledger.decisions("inc-1")
    assert {i: (a.decision, a.by, a.reason) for i, a in decided.items()} == {
        0: ("approve", "alice", "looks safe"), 1: ("reject", "bob", "")}
    assert decided[0].at == AT
    assert ledger.decisions("inc-2") == {}


def test_the_kill_switch_is_kept_across_reopening(ledger, backend):
    assert not ledger.paused()
    ledger.set_paused(True, "alice")
    reopened = Ledger(backend)
    try:
        assert reopened.paused()
        reopened.set_paused(False, "bob")
        assert not ledger.paused()
        assert reopened.db.connection().execute("SELECT value, by FROM control").fetchall() == [("0", "bob")]
    finally:
        reopened.close()


def test_a_shared_database_is_migrated_and_left_open(backend):
    db = open_database(backend)
    try:
        Ledger(db).close()
        assert versions(db) == {"ledger": LEDGER_SCHEMA.version} == {"ledger": 1}
        assert Ledger(db).paused() is False, "closing the ledger did not close the database it shares"
    finally:
        db.close()


def test_workers_racing_to_start_one_step_insert_it_once_and_count_every_attempt(ledger, backend):
    """Several workers (each its own connection) start the same step at once: one inserts it; none
    fails on the duplicate key, and each reads the row with its own attempt counted."""
    workers = [Ledger(backend) for _ in range(WORKERS)]
    ready = threading.Barrier(WORKERS)

    def race(worker: Ledger) -> dict:
        ready.wait()
        return worker.start("inc-1/0/do", "inc-1", 0, "do", "restart", "cart-0", {"by": id(worker)})

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            rows = list(pool.map(race, workers))
    finally:
        for worker in workers:
            worker.close()
    assert {row["status"] for row in rows} == {"started"}
    assert sorted(row["attempts"] for row in rows) == list(range(1, WORKERS + 1))
    assert ledger.get("inc-1/0/do")["attempts"] == WORKERS
    assert ledger.db.connection().execute("SELECT count(*) FROM executions").fetchone()[0] == 1


def test_people_deciding_one_action_at_once_keep_exactly_one_decision(ledger, backend):
    workers = [Ledger(backend) for _ in range(WORKERS)]
    ready = threading.Barrier(WORKERS)

    def race(pair: tuple[int, Ledger]):
        who, worker = pair
        ready.wait()
        return worker.decide("inc-1", 0, who % 2 == 0, f"person-{who}")

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(race, enumerate(workers)))
    finally:
        for worker in workers:
            worker.close()
    kept = [approval for approval in results if approval is not None]
    assert len(kept) == 1
    assert ledger.decisions("inc-1")[0].by == kept[0].by
