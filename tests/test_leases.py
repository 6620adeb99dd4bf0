"""Leases with epochs on both backends (a real SQLite file, a real PostgreSQL server): taking, renewing,
losing and releasing one, the fence a lost lease's writes meet, and workers racing for one."""

from __future__ import annotations

import threading
import time

import pytest

from agent.cluster import Fenced, Leases
from agent.db import open_database


@pytest.fixture
def leases(backend):
    db = open_database(backend)
    yield Leases(db)
    db.close()


def test_a_free_lease_is_taken_held_and_renewed_at_the_same_epoch(leases):
    first = leases.acquire("triage", "w1", ttl_s=30)
    assert first is not None and (first.holder, first.epoch) == ("w1", 1)
    assert leases.acquire("triage", "w2", ttl_s=30) is None, "held by w1"
    again = leases.acquire("triage", "w1", ttl_s=30)
    assert again.epoch == 1 and again.expires_at >= first.expires_at
    renewed = leases.renew(first, ttl_s=60)
    assert renewed.epoch == 1 and renewed.expires_at > first.expires_at
    with leases.db.write() as conn:
        leases.fence(conn, renewed)  # still ours: no error


def test_an_expired_lease_goes_to_the_next_taker_and_fences_the_old_holder(leases):
    old = leases.acquire("incident:inc-1", "w1", ttl_s=0.3)
    time.sleep(0.5)  # w1 stopped renewing (died, or was paused)
    new = leases.acquire("incident:inc-1", "w2", ttl_s=30)
    assert (new.holder, new.epoch) == ("w2", 2)
    assert leases.renew(old, ttl_s=30) is None, "an expired lease cannot be renewed"
    with leases.db.write() as conn:
        conn.execute("CREATE TABLE side_effects (n INTEGER)")
    with pytest.raises(Fenced, match="incident:inc-1 of w1 at epoch 1 is gone \\(now held by w2 at epoch 2\\)"):
        with leases.db.write() as conn:
            conn.execute("INSERT INTO side_effects VALUES (1)")  # what the old holder tried to write
            leases.fence(conn, old)
    assert leases.db.connection().execute("SELECT COUNT(*) FROM side_effects").fetchone()[0] == 0, \
        "the fenced transaction committed nothing"
    with leases.db.write() as conn:
        leases.fence(conn, new)


def test_an_unrenewed_lease_fences_its_own_holder(leases):
    lease = leases.acquire("triage", "w1", ttl_s=0.2)
    time.sleep(0.4)
    with pytest.raises(Fenced):
        with leases.db.write() as conn:
            leases.fence(conn, lease)
    again = leases.acquire("triage", "w1", ttl_s=30)
    assert again.epoch == 2, "taking it again after it lapsed is a new epoch"


def test_a_restarted_holder_takes_its_lease_back_at_once_at_the_next_epoch(leases):
    before = leases.acquire("leader", "w1", ttl_s=60)  # then w1 is killed and started again
    after = leases.acquire("leader", "w1", ttl_s=60, anew=True)
    assert (after.holder, after.epoch) == ("w1", before.epoch + 1), "no wait for the old lease to expire"
    with pytest.raises(Fenced):  # what the previous life had in flight cannot commit
        with leases.db.write() as conn:
            leases.fence(conn, before)
    assert leases.acquire("leader", "w2", ttl_s=60, anew=True) is None, "anew never takes another's lease"


def test_a_released_lease_is_taken_at_once(leases):
    lease = leases.acquire("triage", "w1", ttl_s=60)
    leases.release(lease)
    taken = leases.acquire("triage", "w2", ttl_s=60)
    assert (taken.holder, taken.epoch) == ("w2", 2)
    assert [(h["name"], h["holder"], h["epoch"], h["live"]) for h in leases.holders()] == [("triage", "w2", 2, True)]


def test_workers_racing_for_a_lease_get_it_once(backend):
    databases = [open_database(backend) for _ in range(6)]
    won: list[str] = []
    start = threading.Barrier(len(databases))

    def race(n, db):
        leases = Leases(db)
        start.wait(10)
        if leases.acquire("triage", f"w{n}", ttl_s=30) is not None:
            won.append(f"w{n}")
    threads = [threading.Thread(target=race, args=(n, db)) for n, db in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for db in databases:
        db.close()
    assert len(won) == 1, won


def test_a_worker_owns_an_incident_until_it_is_final_and_another_takes_it_once_the_owner_stops(leases):
    from agent.cluster import Ownership

    a, b = Ownership(leases, "a", ttl_s=0.4), Ownership(leases, "b", ttl_s=30)
    assert a.take("inc-1") and a.owns("inc-1")
    assert not b.take("inc-1") and b.others() == {"inc-1"}, "owned by a"
    assert a.renew() == [] and a.owned == ["inc-1"], "renewed while a beats"
    time.sleep(0.6)  # a stops beating (died, or paused past its lease)
    assert b.take("inc-1") and b.others() == set()
    assert a.renew() == ["inc-1"] and a.owned == [], "a finds it lost"
    with pytest.raises(Fenced, match="does not own incident inc-1"):
        with leases.db.write() as conn:
            a.fence(conn, "inc-1")
    with leases.db.write() as conn:
        b.fence(conn, "inc-1")
    b.release("inc-1")  # final: no row stays behind
    assert [h["name"] for h in leases.holders("incident:")] == []


def test_the_ledger_refuses_a_step_of_an_incident_its_worker_no_longer_owns(backend):
    from agent.cluster import Ownership
    from agent.ledger import Ledger

    db = open_database(backend)
    try:
        leases = Leases(db)
        mine, theirs = Ownership(leases, "a", ttl_s=30), Ownership(leases, "b", ttl_s=30)
        ledger = Ledger(db, fence=mine.fence)
        assert mine.take("inc-1")
        ledger.start("inc-1/0/do", "inc-1", 0, "do", "restart_instance", "cart-0", {})
        with pytest.raises(Fenced):  # never taken by `a`
            ledger.start("inc-2/0/do", "inc-2", 0, "do", "restart_instance", "cart-0", {})
        with db.write() as conn:  # as if `a` was paused past its lease and `b` took the incident over
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = 'incident:inc-1'")
        assert theirs.take("inc-1")
        with pytest.raises(Fenced, match="incident:inc-1 of a at epoch 1 is gone"):
            ledger.finish("inc-1/0/do", True, {"ok": True})
        assert ledger.get("inc-1/0/do")["status"] == "started", "the step stays for its new owner to reconcile"
        assert ledger.get("inc-2/0/do") is None
        ledger.close()
    finally:
        db.close()


def test_a_restarted_worker_takes_its_own_incidents_back_at_the_next_epoch(leases):
    from agent.cluster import Ownership

    before = Ownership(leases, "a", ttl_s=60)
    assert before.take("inc-1")
    after = Ownership(leases, "a", ttl_s=60)  # the same worker id, after a kill -9
    assert after.take("inc-1")
    assert [(h["holder"], h["epoch"]) for h in leases.holders("incident:")] == [("a", 2)]
    with pytest.raises(Fenced):
        with leases.db.write() as conn:
            before.fence(conn, "inc-1")
