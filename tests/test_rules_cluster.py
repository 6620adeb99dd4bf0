"""Rules across a cluster, on both backends: workers on one database share one rule set version. A change
on one worker reaches the others at their next poll, a refused change is never published, a worker
started later adopts the cluster's version, workers publishing at once converge on the latest, and each
worker's version in force is on record for `rtem cluster status`."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.db import open_database
from agent.rules_reload import RulesReloader
from agent.rules_shared import SharedRules, content_of, read_files, rules_in_force, write_files
from rules._check import packaged_rules_dir
from tests.test_rules_reload import BROKEN, DENY_BIG, edit, scale_out

PACKAGED = packaged_rules_dir()


@pytest.fixture
def db(backend):
    database = open_database(backend)
    yield database
    database.close()


@pytest.fixture
def audit(db):
    return AuditLog(db)  # on a shared database: closing it is the database's close


@pytest.fixture
def workers(db, audit, tmp_path):
    """`start("w1")`: a worker's reloader on the shared database, with a rules directory of its own (a copy
    of the packaged rules); every reloader started is closed afterwards."""
    started: list[RulesReloader] = []

    def start(worker: str, **options) -> RulesReloader:
        root = tmp_path / worker / "rules"
        if not root.exists():
            for kind in ("guardrails", "contracts", "detect"):
                shutil.copytree(PACKAGED / kind, root / kind)
        reloader = RulesReloader(root, audit=audit, actor=f"tester on {worker}", shared=SharedRules(db),
                                 worker_id=worker, **options)
        started.append(reloader)
        return reloader

    yield start
    for reloader in started:
        reloader.close()


def guardrails(reloader: RulesReloader) -> Path:
    return reloader.rules_dir / "guardrails" / "default.yaml"


def test_a_change_on_one_worker_reaches_the_others_at_their_next_poll(workers, db, audit):
    a, b = workers("w1"), workers("w2")
    assert a.current().digest == b.current().digest
    assert b.check_cluster() is None, "nothing new"

    edit(guardrails(a), guardrails(a).read_text() + DENY_BIG)
    loaded = a.check_now()
    assert loaded.status == "loaded"
    latest = SharedRules(db).latest()
    assert (latest.digest, latest.worker, latest.via) == (loaded.digest, "w1", "check_now")
    assert latest.files["guardrails/default.yaml"] == guardrails(a).read_text()

    adopted = b.check_cluster()
    assert adopted.status == "loaded" and adopted.digest == loaded.digest == b.current().digest
    assert adopted.diff.added["guardrails"] == ["deny-big-scale-out"]
    verdict = scale_out(b.current().guard, 18)
    assert verdict.outcome == "deny" and verdict.ruleset == b.current().guard.guardrails.digest
    assert b.current().versions["rules"] == loaded.digest, "what each verdict's record names"
    assert b.check_cluster() is None and a.check_cluster() is None, "each is on the latest"

    record = audit.records(kind="rules.loaded")[-1]
    assert record.inputs["via"] == "cluster" and record.inputs["actor"] == "tester on w2"
    assert record.inputs["cluster"]["published_by"] == "w1" and record.inputs["cluster"]["version"] == latest.id
    assert record.decision["digest"] == loaded.digest
    assert b.status()["cluster"] == {"worker": "w2", "version": latest.id}
    assert "deny-big" not in guardrails(b).read_text(), "the worker's own files are left alone"
    assert b.check_now().status == "unchanged", "nor are they news: the stale copy is not published back"
    assert SharedRules(db).latest().id == latest.id


def test_a_refused_change_is_not_published_and_the_others_keep_their_rules(workers, db, audit):
    a, b = workers("w1"), workers("w2")
    before = SharedRules(db).latest()
    edit(guardrails(a), guardrails(a).read_text() + BROKEN)
    assert a.check_now().status == "refused"
    assert SharedRules(db).latest() == before, "nothing published"
    assert b.check_cluster() is None and b.current().digest == before.digest == a.current().digest
    [refused] = audit.records(kind="rules.refused")
    assert "cluster" not in refused.inputs


def test_a_version_a_worker_refuses_leaves_its_rules_in_force(workers, db, audit):
    a, b = workers("w1"), workers("w2")
    keep = b.current()
    # A version b cannot load (as if published by a newer rtem that knows more): b judges it as it judges
    # its own files, refuses it once, and keeps its rules.
    files = read_files(a.rules_dir)
    files["guardrails/default.yaml"] += BROKEN
    bad = SharedRules(db).publish("0123456789abcdef", files, worker="w9", actor="newer rtem", via="watch")
    result = b.check_cluster()
    assert result.status == "refused" and b.current() is keep
    [refused] = audit.records(kind="rules.refused")
    assert refused.inputs["cluster"] == {**bad.origin(), "published_by": "w9"} and refused.inputs["via"] == "cluster"
    assert b.check_cluster() is None, "a refused version is not judged again"
    assert len(audit.records(kind="rules.refused")) == 1
    [row] = [r for r in rules_in_force(db) if r["worker"] == "w2"]
    assert row["digest"] == keep.digest and not row["current"], "status shows w2 off the cluster's version"


def test_a_worker_started_later_adopts_the_clusters_version(workers, db, audit):
    a = workers("w1")
    edit(guardrails(a), guardrails(a).read_text() + DENY_BIG)
    published = a.check_now()
    late = workers("w3")  # its files are the packaged rules, older than the cluster's
    assert late.current().digest == published.digest
    assert scale_out(late.current().guard, 18).outcome == "deny"
    assert [r.inputs["via"] for r in audit.records(kind="rules.loaded")][-2:] == ["start", "cluster"]
    assert SharedRules(db).latest().digest == published.digest, "the late worker published nothing"


def test_a_restarted_worker_publishes_files_edited_while_it_was_down(workers, db):
    a, b = workers("w1"), workers("w2")
    edit(guardrails(a), guardrails(a).read_text() + DENY_BIG)  # while w1 is down (its reloader is not asked)
    again = workers("w1")
    assert scale_out(again.current().guard, 18).outcome == "deny"
    assert SharedRules(db).latest().digest == again.current().digest, "an offline edit is a change"
    assert b.check_cluster().digest == again.current().digest
    b_again = workers("w2")  # b's own files did not change while it was down: it adopts
    assert b_again.current().digest == again.current().digest


def test_the_first_worker_publishes_its_set_and_everyone_reports_its_version(workers, db):
    a = workers("w1")
    first = SharedRules(db).latest()
    assert (first.digest, first.worker, first.via) == (a.current().digest, "w1", "start")
    assert content_of(first.files) == first.content
    b = workers("w2")
    assert SharedRules(db).latest().id == first.id, "the same set is one version"
    rows = rules_in_force(db)
    assert [(r["worker"], r["digest"], r["current"]) for r in rows] == [
        ("w1", a.current().digest, True), ("w2", b.current().digest, True)]
    assert all(r["age_s"] < 60 and r["at"] and r["since"] for r in rows)


def test_concurrent_publishes_converge_on_the_latest(workers, db):
    a, b = workers("w1"), workers("w2")
    edit(guardrails(a), guardrails(a).read_text() + DENY_BIG)
    edit(guardrails(b), guardrails(b).read_text().replace("params.replicas: {gt: 10}", "params.replicas: {gt: 12}"))
    barrier = threading.Barrier(2)
    results = {}

    def change(name: str, reloader: RulesReloader) -> None:
        barrier.wait()
        results[name] = reloader.check_now()

    threads = [threading.Thread(target=change, args=(n, r)) for n, r in (("w1", a), ("w2", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {r.status for r in results.values()} == {"loaded"}
    for reloader in (a, b):
        reloader.check_cluster()
    latest = SharedRules(db).latest()
    assert a.current().digest == b.current().digest == latest.digest
    assert latest.digest in {results["w1"].digest, results["w2"].digest}
    assert a.check_cluster() is None and b.check_cluster() is None
    assert {r["digest"] for r in rules_in_force(db)} == {latest.digest}


async def test_watch_follows_the_cluster_and_reports_its_version(workers, db):
    a, b = workers("w1"), workers("w2", grace_s=0)
    stop = asyncio.Event()
    task = asyncio.create_task(b.watch(0.02, stop))
    edit(guardrails(a), guardrails(a).read_text() + DENY_BIG)
    published = a.check_now()
    for _ in range(250):
        if b.current().digest == published.digest:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert b.current().digest == published.digest
    assert {r["worker"]: r["digest"] for r in rules_in_force(db)}["w2"] == published.digest


def test_version_files_stay_inside_their_directory(tmp_path):
    with pytest.raises(ValueError, match="not a file of"):
        write_files({"../../etc/passwd": "x"}, tmp_path / "v1")
    with pytest.raises(ValueError, match="not a file of"):
        write_files({"guardrails/sub/x.yaml": "x"}, tmp_path / "v1")
    write_files({"detect/a.yaml": "a: 1\r\n"}, tmp_path / "v1")
    assert (tmp_path / "v1" / "detect" / "a.yaml").read_bytes() == b"a: 1\r\n"


def test_rules_in_force_on_a_database_without_shared_rules(tmp_path):
    db = open_database(tmp_path / "empty.db")
    try:
        assert rules_in_force(db) == []
    finally:
        db.close()
