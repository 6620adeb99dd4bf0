"""The audit log on real SQLite files and a real PostgreSQL server (the `backend` fixture): the chain,
tamper detection, the rules the database enforces, concurrent writers and sinks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from pydantic import BaseModel

from agent.audit import AUDIT_SCHEMA, GENESIS, AuditLog, Problem, record_hash, verify_file
from agent.db import is_postgres_url, open_database, versions
from agent.models import DecisionRecord

REPO = Path(__file__).resolve().parents[1]
REFUSED = (sqlite3.DatabaseError, psycopg.DatabaseError)


def fill(where: str, n: int) -> list[DecisionRecord]:
    with AuditLog(where) as log:
        return [log.append("decision", incident_id=f"inc-{i % 2}", node="guard", inputs={"i": i},
                           decision={"verdict": "allow"}, reasons=[f"rule-{i}", "débit → élevé"],
                           evidence=[f"ev-{i}"], versions={"ruleset": "abc"}) for i in range(1, n + 1)]


# What someone allowed to change the schema does first: drop the triggers (SQLite) or disable them (PostgreSQL).
_TRIGGERS_OFF = {"sqlite": ("DROP TRIGGER audit_no_update", "DROP TRIGGER audit_no_delete",
                            "DROP TRIGGER audit_head_forward_only"),
                 "postgres": ("ALTER TABLE audit DISABLE TRIGGER USER", "ALTER TABLE audit_head DISABLE TRIGGER USER")}
_TRIGGERS_BACK_ON = {"sqlite": (), "postgres": ("ALTER TABLE IF EXISTS audit ENABLE TRIGGER USER",
                                                "ALTER TABLE IF EXISTS audit_head ENABLE TRIGGER USER")}


def tamper(where: str, *statements: str) -> None:
    """Take the triggers out of the way, edit freely, and (on PostgreSQL) turn them back on to cover it."""
    db = open_database(where)
    try:
        with db.write() as conn:
            for sql in (*_TRIGGERS_OFF[db.dialect.name], *statements, *_TRIGGERS_BACK_ON[db.dialect.name]):
                conn.execute(sql)
    finally:
        db.close()


def run_sql(where: str, sql: str) -> None:
    """One statement, as anyone with a SQL prompt on the database can run it."""
    db = open_database(where)
    try:
        db.connection().execute(sql)
    finally:
        db.close()


def expected_hash(record: DecisionRecord) -> str:
    # Written out independently of the module, so a change to the formula fails here.
    fields = record.model_dump(mode="json", exclude={"hash"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((record.prev_hash + canonical).encode("utf-8")).hexdigest()


def kinds(report) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


# --- the chain --------------------------------------------------------------------------------------------


def test_append_builds_a_valid_chain(backend: str) -> None:
    records = fill(backend, 4)

    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for before, after in zip(records, records[1:]):
        assert after.prev_hash == before.hash
    for record in records:
        assert record.hash == expected_hash(record) == record_hash(record)


def test_records_read_back_equal_what_append_returned(backend: str) -> None:
    written = fill(backend, 3)
    with AuditLog(backend) as log:
        assert log.records() == written
        assert log.last() == written[-1]
        assert log.count() == 3
        assert all(record_hash(r) == r.hash for r in log.records())


def test_verify_is_ok_on_a_clean_log(backend: str) -> None:
    fill(backend, 5)
    report = verify_file(backend)
    assert report.ok and report.records == 5 and report.problems == []
    assert "OK" in report.summary()
    with AuditLog(backend) as log:
        assert log.verify() == report


def test_an_empty_log_verifies(backend: str) -> None:
    AuditLog(backend).close()
    report = verify_file(backend)
    assert report.ok and report.records == 0


def test_reopening_continues_the_chain_beside_other_tables(backend: str) -> None:
    run_sql(backend, "CREATE TABLE incidents (id TEXT PRIMARY KEY, status TEXT)")
    run_sql(backend, "INSERT INTO incidents VALUES ('inc-1', 'open')")

    first = fill(backend, 2)
    with AuditLog(backend) as log:
        third = log.append("close", incident_id="inc-1")
        assert versions(log.db)["audit"] == AUDIT_SCHEMA.version
        assert log.db.connection().execute("SELECT status FROM incidents").fetchone() == ("open",)
    assert third.seq == 3 and third.prev_hash == first[-1].hash
    assert verify_file(backend).ok


def test_a_file_is_in_wal_mode(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "rtem.db") as log:
        assert log.db.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_log_made_before_versioned_schemas_only_records_its_version(tmp_path: Path) -> None:
    path = tmp_path / "rtem.db"
    records = fill(str(path), 3)
    before = sqlite3.connect(path).execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE schema_versions")  # as the file was before versioned schemas
    conn.commit()
    conn.close()

    with AuditLog(path) as log:
        assert log.records() == records and log.append("next").seq == 4
    after = sqlite3.connect(path).execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert after == before  # the same tables, indexes and triggers
    assert verify_file(path).ok


# --- tampering ----------------------------------------------------------------------------------------------


def test_a_changed_field_is_reported_at_its_seq(backend: str) -> None:
    fill(backend, 5)
    tamper(backend, "UPDATE audit SET decision = '{\"verdict\":\"deny\"}' WHERE seq = 3")

    report = verify_file(backend)
    assert not report.ok
    assert kinds(report) == [(3, "changed")]
    assert "TAMPERED" in report.summary() and "seq 3 changed" in report.summary()


def test_a_changed_timestamp_is_reported(backend: str) -> None:
    fill(backend, 3)
    tamper(backend, "UPDATE audit SET at = '2001-01-01T00:00:00Z' WHERE seq = 2")
    assert kinds(verify_file(backend)) == [(2, "changed")]


def test_a_rewritten_and_rehashed_record_breaks_the_chain_after_it(backend: str) -> None:
    records = fill(backend, 5)
    forged = records[2].model_copy(update={"decision": {"verdict": "deny"}})
    forged = forged.model_copy(update={"hash": record_hash(forged)})
    tamper(backend, f"UPDATE audit SET decision = '{{\"verdict\":\"deny\"}}', hash = '{forged.hash}' WHERE seq = 3")

    assert kinds(verify_file(backend)) == [(4, "chain_broken")]


def test_rewriting_and_rehashing_the_last_record_is_caught_by_the_head(backend: str) -> None:
    records = fill(backend, 3)
    forged = records[2].model_copy(update={"node": "evil"})
    tamper(backend, f"UPDATE audit SET node = 'evil', hash = '{record_hash(forged)}' WHERE seq = 3")

    assert kinds(verify_file(backend)) == [(3, "chain_broken")]


def test_a_deleted_middle_record_is_reported(backend: str) -> None:
    fill(backend, 5)
    tamper(backend, "DELETE FROM audit WHERE seq = 3")

    report = verify_file(backend)
    assert report.records == 4
    assert kinds(report) == [(3, "deleted")]
    assert "seq 3 missing" in report.problems[0].detail


def test_a_deleted_range_is_named(backend: str) -> None:
    fill(backend, 6)
    tamper(backend, "DELETE FROM audit WHERE seq IN (2, 3, 4)")

    report = verify_file(backend)
    assert kinds(report) == [(2, "deleted")]
    assert "2–4" in report.problems[0].detail


def test_deleting_the_first_record_is_reported(backend: str) -> None:
    fill(backend, 3)
    tamper(backend, "DELETE FROM audit WHERE seq = 1")
    assert kinds(verify_file(backend)) == [(1, "deleted")]


def test_a_truncated_tail_is_caught_by_the_head_anchor(backend: str) -> None:
    fill(backend, 5)
    tamper(backend, "DELETE FROM audit WHERE seq >= 4")

    report = verify_file(backend)
    assert kinds(report) == [(4, "deleted")]
    assert "4–5" in report.problems[0].detail


def test_emptying_the_log_is_caught_by_the_head_anchor(backend: str) -> None:
    fill(backend, 3)
    tamper(backend, "DELETE FROM audit")
    assert kinds(verify_file(backend)) == [(1, "deleted")]


def test_a_dropped_head_anchor_is_reported(backend: str) -> None:
    fill(backend, 2)
    tamper(backend, "DROP TABLE audit_head")
    assert kinds(verify_file(backend)) == [(0, "chain_broken")]


def test_swapped_records_are_reported_as_reordered(backend: str) -> None:
    fill(backend, 5)
    columns = "at, incident_id, kind, node, inputs, decision, reasons, evidence, versions, prev_hash, hash"
    tamper(backend,
           "CREATE TABLE scratch AS SELECT * FROM audit WHERE seq IN (2, 3)",
           f"UPDATE audit SET ({columns}) = (SELECT {columns} FROM scratch WHERE scratch.seq = 5 - audit.seq) "
           "WHERE seq IN (2, 3)")

    assert kinds(verify_file(backend)) == [(2, "reordered"), (3, "reordered")]


def test_every_problem_is_reported_not_just_the_first(backend: str) -> None:
    fill(backend, 8)
    tamper(backend, "UPDATE audit SET node = 'x' WHERE seq = 2", "DELETE FROM audit WHERE seq = 5",
           "UPDATE audit SET kind = 'y' WHERE seq = 7")
    assert kinds(verify_file(backend)) == [(2, "changed"), (5, "deleted"), (7, "changed")]


def test_problems_beyond_the_cap_are_counted_not_kept(backend: str) -> None:
    fill(backend, 10)
    tamper(backend, "UPDATE audit SET node = 'x'")

    report = verify_file(backend, max_problems=3)
    assert not report.ok
    assert len(report.problems) == 3 and report.omitted == 7
    assert "10 problem(s)" in report.summary()


def test_garbage_json_is_reported_as_changed(backend: str) -> None:
    fill(backend, 2)
    tamper(backend, "UPDATE audit SET inputs = 'not json' WHERE seq = 1")
    assert kinds(verify_file(backend)) == [(1, "changed")]


def test_verify_file_needs_an_existing_audit_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_file(tmp_path / "missing.db")


def test_verify_file_needs_an_audit_table(backend: str) -> None:
    run_sql(backend, "CREATE TABLE t (x TEXT)")
    with pytest.raises(ValueError, match="no audit table"):
        verify_file(backend)


# --- the database refuses edits -------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE audit SET node = 'evil' WHERE seq = 1",
    "DELETE FROM audit WHERE seq = 2",
    "DELETE FROM audit",
    ("INSERT INTO audit (seq, at, kind, prev_hash, hash) VALUES (2, 'x', 'k', 'p', 'h') "
     "ON CONFLICT (seq) DO UPDATE SET node = 'evil'"),
    "UPDATE audit_head SET seq = 1",
    "DELETE FROM audit_head",
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 1, 'h') ON CONFLICT (id) DO UPDATE SET seq = 1",
    "UPDATE audit_anchor SET seq = 1",
    "DELETE FROM audit_anchor",
    "INSERT INTO audit_anchor (id, seq, hash) VALUES (2, 0, 'h')",
])
def test_plain_sql_cannot_edit_the_log(backend: str, sql: str) -> None:
    fill(backend, 3)
    with pytest.raises(REFUSED, match="append-only"):
        run_sql(backend, sql)
    assert verify_file(backend).ok


# Each backend's own ways around a row trigger: SQLite's REPLACE, PostgreSQL's TRUNCATE.
OWN_EDITS = {
    "sqlite": ("INSERT OR REPLACE INTO audit (seq, at, kind, prev_hash, hash) VALUES (2, 'x', 'k', 'p', 'h')",
               "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, 1, 'h')"),
    "postgres": ("TRUNCATE audit", "TRUNCATE audit_head", "TRUNCATE audit_anchor", "TRUNCATE audit, audit_head"),
}


def test_the_backends_own_edits_are_refused(backend: str) -> None:
    fill(backend, 3)
    for sql in OWN_EDITS["postgres" if is_postgres_url(backend) else "sqlite"]:
        with pytest.raises(REFUSED, match="append-only"):
            run_sql(backend, sql)
    assert verify_file(backend).ok and verify_file(backend).records == 3


def test_an_insert_that_does_not_extend_the_head_is_refused(backend: str) -> None:
    records = fill(backend, 2)
    insert = "INSERT INTO audit (seq, at, kind, prev_hash, hash) VALUES ({}, 'x', 'k', '{}', 'h')"
    for seq, prev_hash in ((3, records[0].hash), (2, records[1].hash)):  # the wrong hash; a seq taken
        with pytest.raises(REFUSED, match="extend the chain head"):
            run_sql(backend, insert.format(seq, prev_hash))
    assert verify_file(backend).ok


# --- concurrency ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instances", [8, 2], ids=["each-its-own-log", "logs-shared-by-threads"])
def test_concurrent_writers_append_one_chain(backend: str, instances: int) -> None:
    """Eight threads: each with its own AuditLog (as workers in processes of their own have), or four to a
    log. The database serialises the appends: seq runs 1..200 without a gap, and the chain verifies."""
    writers, each = 8, 25
    logs = [AuditLog(backend) for _ in range(instances)]
    start, failed = threading.Barrier(writers), []

    def work(log: AuditLog, name: str) -> None:
        start.wait()
        try:
            for i in range(each):
                log.append("step", node=name, inputs={"i": i})
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            failed.append(exc)

    threads = [threading.Thread(target=work, args=(logs[n % instances], f"t{n}")) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failed == []
    records = logs[0].records()
    assert [r.seq for r in records] == list(range(1, writers * each + 1))
    for n in range(writers):  # each writer's records stay in its own order
        assert [r.inputs["i"] for r in records if r.node == f"t{n}"] == list(range(each))
    assert verify_file(backend).ok
    for log in logs:
        log.close()


def test_purges_beside_appends_keep_one_chain(backend: str) -> None:
    """A purge takes the head as an append does: purges and appends in other instances interleave, and
    the chain verifies from the anchor the last purge left."""
    old = datetime.now(timezone.utc) - timedelta(days=10)
    writers, each = 4, 20
    logs = [AuditLog(backend) for _ in range(writers + 1)]
    start, failed = threading.Barrier(writers + 1), []

    def append(log: AuditLog) -> None:
        start.wait()
        try:
            for _ in range(each):
                log.append("step", at=old)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            failed.append(exc)

    def purge(log: AuditLog) -> None:
        start.wait()
        try:
            for _ in range(10):
                log.purge(old + timedelta(days=1))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            failed.append(exc)

    threads = [threading.Thread(target=append, args=(log,)) for log in logs[:writers]]
    threads.append(threading.Thread(target=purge, args=(logs[-1],)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failed == []
    report = logs[0].verify()
    assert report.ok, report.problems
    assert logs[0].last().seq == writers * each + 10
    for log in logs:
        log.close()


_WRITER = """
import sys
from agent.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[2])):
    log.append("step", node=sys.argv[3], inputs={"i": i})
"""


@pytest.mark.integration
def test_processes_append_one_chain(backend: str) -> None:
    AuditLog(backend).close()  # create the schema once, so the writers race on appends, not on setup
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(backend), "40", f"p{n}"], env=env,
                              stderr=subprocess.PIPE, text=True) for n in range(3)]
    with AuditLog(backend) as log:
        for i in range(40):
            log.append("step", node="main", inputs={"i": i})
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()

    with AuditLog(backend) as log:
        records = log.records()
    assert [r.seq for r in records] == list(range(1, 161))
    for node in ("main", "p0", "p1", "p2"):
        assert [r.inputs["i"] for r in records if r.node == node] == list(range(40))
    assert verify_file(backend).ok


# --- sinks and values -------------------------------------------------------------------------------------------


def test_a_failing_sink_does_not_lose_the_record(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[DecisionRecord] = []

    def broken(record: DecisionRecord) -> None:
        raise ConnectionError("AUDIT stream unavailable")

    with AuditLog(backend) as log:
        log.add_sink(broken)
        log.add_sink(seen.append)
        with caplog.at_level(logging.ERROR, logger="agent.audit"):
            record = log.append("decision", incident_id="inc-1")
        assert log.records() == [record]
        assert seen == [record]
        assert "seq 1" in caplog.text and "AUDIT stream unavailable" in caplog.text
        assert log.append("decision").seq == 2
    assert verify_file(backend).ok


def test_a_sink_sees_a_committed_record_and_may_read_the_log(backend: str) -> None:
    with AuditLog(backend) as log:
        counts: list[int] = []
        log.add_sink(lambda record: counts.append(verify_file(backend).records))  # another connection: committed
        log.add_sink(lambda record: counts.append(log.count()))  # would deadlock if sinks ran under the lock
        log.append("decision")
    assert counts == [1, 1]


class Verdict(BaseModel):
    verdict: str
    at: datetime


def test_values_are_reduced_to_json(backend: str) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    with AuditLog(backend) as log:
        record = log.append("guard", inputs={"proposal": Verdict(verdict="allow", at=when), "rules": {"b"}},
                            decision=Verdict(verdict="deny", at=when), at=datetime(2024, 5, 1, 12, 0, 1))
        assert record.inputs == {"proposal": {"verdict": "allow", "at": "2024-05-01T12:00:00Z"}, "rules": ["b"]}
        assert record.decision == {"verdict": "deny", "at": "2024-05-01T12:00:00Z"}
        assert record.at == datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone.utc)  # naive is taken as UTC
        assert log.records() == [record]
    assert verify_file(backend).ok


def test_an_unserialisable_value_is_refused_without_taking_a_seq(backend: str) -> None:
    with AuditLog(backend) as log:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            log.append("guard", inputs={"lock": threading.Lock()})
        with pytest.raises(ValueError):
            log.append("guard", versions={"model": None})
        assert log.count() == 0
        assert log.append("guard").seq == 1


def test_queries_filter_by_incident_kind_and_seq(backend: str) -> None:
    with AuditLog(backend) as log:
        for i in range(6):
            log.append("propose" if i % 2 else "guard", incident_id=f"inc-{i % 3}")
        assert [r.seq for r in log.records(incident_id="inc-0")] == [1, 4]
        assert [r.seq for r in log.records(kind="guard")] == [1, 3, 5]
        assert [r.seq for r in log.records(kind="guard", incident_id="inc-2")] == [3]
        assert [r.seq for r in log.records(since_seq=4)] == [5, 6]
        assert [r.seq for r in log.records(limit=2)] == [1, 2]
        assert log.last().seq == 6 and log.count() == 6


def test_an_empty_log_has_no_last_record(backend: str) -> None:
    with AuditLog(backend) as log:
        assert log.last() is None and log.count() == 0 and log.records() == []


def test_problem_kinds_are_checked() -> None:
    with pytest.raises(ValueError):
        Problem(seq=1, kind="vanished", detail="")
