"""The audit log against real SQLite files: the chain, tamper detection, triggers, concurrency and sinks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.audit import GENESIS, AuditLog, Problem, record_hash, verify_file
from agent.models import DecisionRecord

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rtem.db"


def fill(path: Path, n: int) -> list[DecisionRecord]:
    with AuditLog(path) as log:
        return [log.append("decision", incident_id=f"inc-{i % 2}", node="guard", inputs={"i": i},
                           decision={"verdict": "allow"}, reasons=[f"rule-{i}", "débit → élevé"],
                           evidence=[f"ev-{i}"], versions={"ruleset": "abc"}) for i in range(1, n + 1)]


def tamper(path: Path, *statements: str) -> None:
    """What someone with the file in hand can do: drop the triggers, then edit freely."""
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def expected_hash(record: DecisionRecord) -> str:
    # Written out independently of the module, so a change to the formula fails here.
    fields = record.model_dump(mode="json", exclude={"hash"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((record.prev_hash + canonical).encode("utf-8")).hexdigest()


def kinds(report) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


# --- the chain --------------------------------------------------------------------------------------------


def test_append_builds_a_valid_chain(db_path: Path) -> None:
    records = fill(db_path, 4)

    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for before, after in zip(records, records[1:]):
        assert after.prev_hash == before.hash
    for record in records:
        assert record.hash == expected_hash(record) == record_hash(record)


def test_records_read_back_equal_what_append_returned(db_path: Path) -> None:
    written = fill(db_path, 3)
    with AuditLog(db_path) as log:
        assert log.records() == written
        assert log.last() == written[-1]
        assert log.count() == 3
        assert all(record_hash(r) == r.hash for r in log.records())


def test_verify_is_ok_on_a_clean_log(db_path: Path) -> None:
    fill(db_path, 5)
    report = verify_file(db_path)
    assert report.ok and report.records == 5 and report.problems == []
    assert "OK" in report.summary()
    with AuditLog(db_path) as log:
        assert log.verify() == report


def test_an_empty_log_verifies(db_path: Path) -> None:
    AuditLog(db_path).close()
    report = verify_file(db_path)
    assert report.ok and report.records == 0


def test_reopening_continues_the_chain_beside_other_tables(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE incidents (id TEXT PRIMARY KEY, status TEXT)")
    conn.execute("INSERT INTO incidents VALUES ('inc-1', 'open')")
    conn.commit()
    conn.close()

    first = fill(db_path, 2)
    with AuditLog(db_path) as log:
        third = log.append("close", incident_id="inc-1")
        assert log._db.journal_mode == "wal"
    assert third.seq == 3 and third.prev_hash == first[-1].hash
    assert verify_file(db_path).ok
    assert sqlite3.connect(db_path).execute("SELECT status FROM incidents").fetchone() == ("open",)


# --- tampering ----------------------------------------------------------------------------------------------


def test_a_changed_field_is_reported_at_its_seq(db_path: Path) -> None:
    fill(db_path, 5)
    tamper(db_path, "UPDATE audit SET decision = '{\"verdict\":\"deny\"}' WHERE seq = 3")

    report = verify_file(db_path)
    assert not report.ok
    assert kinds(report) == [(3, "changed")]
    assert "TAMPERED" in report.summary() and "seq 3 changed" in report.summary()


def test_a_changed_timestamp_is_reported(db_path: Path) -> None:
    fill(db_path, 3)
    tamper(db_path, "UPDATE audit SET at = '2001-01-01T00:00:00Z' WHERE seq = 2")
    assert kinds(verify_file(db_path)) == [(2, "changed")]


def test_a_rewritten_and_rehashed_record_breaks_the_chain_after_it(db_path: Path) -> None:
    records = fill(db_path, 5)
    forged = records[2].model_copy(update={"decision": {"verdict": "deny"}})
    forged = forged.model_copy(update={"hash": record_hash(forged)})
    tamper(db_path, f"UPDATE audit SET decision = '{{\"verdict\":\"deny\"}}', hash = '{forged.hash}' WHERE seq = 3")

    assert kinds(verify_file(db_path)) == [(4, "chain_broken")]


def test_rewriting_and_rehashing_the_last_record_is_caught_by_the_head(db_path: Path) -> None:
    records = fill(db_path, 3)
    forged = records[2].model_copy(update={"node": "evil"})
    tamper(db_path, f"UPDATE audit SET node = 'evil', hash = '{record_hash(forged)}' WHERE seq = 3")

    assert kinds(verify_file(db_path)) == [(3, "chain_broken")]


def test_a_deleted_middle_record_is_reported(db_path: Path) -> None:
    fill(db_path, 5)
    tamper(db_path, "DELETE FROM audit WHERE seq = 3")

    report = verify_file(db_path)
    assert report.records == 4
    assert kinds(report) == [(3, "deleted")]
    assert "seq 3 missing" in report.problems[0].detail


def test_a_deleted_range_is_named(db_path: Path) -> None:
    fill(db_path, 6)
    tamper(db_path, "DELETE FROM audit WHERE seq IN (2, 3, 4)")

    report = verify_file(db_path)
    assert kinds(report) == [(2, "deleted")]
    assert "2–4" in report.problems[0].detail


def test_deleting_the_first_record_is_reported(db_path: Path) -> None:
    fill(db_path, 3)
    tamper(db_path, "DELETE FROM audit WHERE seq = 1")
    assert kinds(verify_file(db_path)) == [(1, "deleted")]


def test_a_truncated_tail_is_caught_by_the_head_anchor(db_path: Path) -> None:
    fill(db_path, 5)
    tamper(db_path, "DELETE FROM audit WHERE seq >= 4")

    report = verify_file(db_path)
    assert kinds(report) == [(4, "deleted")]
    assert "4–5" in report.problems[0].detail


def test_emptying_the_log_is_caught_by_the_head_anchor(db_path: Path) -> None:
    fill(db_path, 3)
    tamper(db_path, "DELETE FROM audit")
    assert kinds(verify_file(db_path)) == [(1, "deleted")]


def test_a_dropped_head_anchor_is_reported(db_path: Path) -> None:
    fill(db_path, 2)
    tamper(db_path, "DROP TABLE audit_head")
    assert kinds(verify_file(db_path)) == [(0, "chain_broken")]


def test_swapped_records_are_reported_as_reordered(db_path: Path) -> None:
    fill(db_path, 5)
    columns = "at, incident_id, kind, node, inputs, decision, reasons, evidence, versions, prev_hash, hash"
    tamper(db_path,
           "CREATE TABLE scratch AS SELECT * FROM audit WHERE seq IN (2, 3)",
           f"UPDATE audit SET ({columns}) = (SELECT {columns} FROM scratch WHERE scratch.seq = 5 - audit.seq) "
           "WHERE seq IN (2, 3)")

    assert kinds(verify_file(db_path)) == [(2, "reordered"), (3, "reordered")]


def test_every_problem_is_reported_not_just_the_first(db_path: Path) -> None:
    fill(db_path, 8)
    tamper(db_path, "UPDATE audit SET node = 'x' WHERE seq = 2", "DELETE FROM audit WHERE seq = 5",
           "UPDATE audit SET kind = 'y' WHERE seq = 7")
    assert kinds(verify_file(db_path)) == [(2, "changed"), (5, "deleted"), (7, "changed")]


def test_problems_beyond_the_cap_are_counted_not_kept(db_path: Path) -> None:
    fill(db_path, 10)
    tamper(db_path, "UPDATE audit SET node = 'x'")

    report = verify_file(db_path, max_problems=3)
    assert not report.ok
    assert len(report.problems) == 3 and report.omitted == 7
    assert "10 problem(s)" in report.summary()


def test_garbage_json_is_reported_as_changed(db_path: Path) -> None:
    fill(db_path, 2)
    tamper(db_path, "UPDATE audit SET inputs = 'not json' WHERE seq = 1")
    assert kinds(verify_file(db_path)) == [(1, "changed")]


def test_verify_file_needs_an_existing_audit_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_file(tmp_path / "missing.db")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="no audit table"):
        verify_file(tmp_path / "other.db")


# --- the database refuses edits -------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE audit SET node = 'evil' WHERE seq = 1",
    "DELETE FROM audit WHERE seq = 2",
    "DELETE FROM audit",
    "INSERT OR REPLACE INTO audit (seq, at, kind, prev_hash, hash) VALUES (2, 'x', 'k', 'p', 'h')",
    "UPDATE audit_head SET seq = 1",
    "DELETE FROM audit_head",
    "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, 1, 'h')",
])
def test_plain_sql_cannot_edit_the_log(db_path: Path, sql: str) -> None:
    fill(db_path, 3)
    conn = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql)
    conn.rollback()
    conn.close()
    assert verify_file(db_path).ok


def test_an_insert_that_does_not_extend_the_head_is_refused(db_path: Path) -> None:
    records = fill(db_path, 2)
    conn = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.DatabaseError, match="extend the chain head"):
        conn.execute("INSERT INTO audit (seq, at, kind, prev_hash, hash) VALUES (3, 'x', 'k', ?, 'h')",
                     (records[0].hash,))
    conn.close()
    assert verify_file(db_path).ok


# --- concurrency ------------------------------------------------------------------------------------------------


def test_threads_and_two_instances_append_one_chain(db_path: Path) -> None:
    first, second = AuditLog(db_path), AuditLog(db_path)

    def work(log: AuditLog, name: str) -> None:
        for i in range(25):
            log.append("step", node=name, inputs={"i": i})

    threads = [threading.Thread(target=work, args=(log, f"t{n}"))
               for n, log in enumerate([first, second] * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    records = first.records()
    assert [r.seq for r in records] == list(range(1, 201))
    for n in range(8):  # each writer's records stay in its own order
        assert [r.inputs["i"] for r in records if r.node == f"t{n}"] == list(range(25))
    assert verify_file(db_path).ok
    first.close()
    second.close()


_WRITER = """
import sys
from agent.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[2])):
    log.append("step", node=sys.argv[3], inputs={"i": i})
"""


@pytest.mark.integration
def test_processes_append_one_chain(db_path: Path) -> None:
    AuditLog(db_path).close()  # create the schema once, so the writers race on appends, not on setup
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db_path), "40", f"p{n}"], env=env,
                              stderr=subprocess.PIPE, text=True) for n in range(3)]
    with AuditLog(db_path) as log:
        for i in range(40):
            log.append("step", node="main", inputs={"i": i})
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()

    with AuditLog(db_path) as log:
        records = log.records()
    assert [r.seq for r in records] == list(range(1, 161))
    for node in ("main", "p0", "p1", "p2"):
        assert [r.inputs["i"] for r in records if r.node == node] == list(range(40))
    assert verify_file(db_path).ok


# --- sinks and values -------------------------------------------------------------------------------------------


def test_a_failing_sink_does_not_lose_the_record(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[DecisionRecord] = []

    def broken(record: DecisionRecord) -> None:
        raise ConnectionError("AUDIT stream unavailable")

    with AuditLog(db_path) as log:
        log.add_sink(broken)
        log.add_sink(seen.append)
        with caplog.at_level(logging.ERROR, logger="agent.audit"):
            record = log.append("decision", incident_id="inc-1")
        assert log.records() == [record]
        assert seen == [record]
        assert "seq 1" in caplog.text and "AUDIT stream unavailable" in caplog.text
        assert log.append("decision").seq == 2
    assert verify_file(db_path).ok


def test_a_sink_sees_a_committed_record_and_may_read_the_log(db_path: Path) -> None:
    with AuditLog(db_path) as log:
        counts: list[int] = []
        log.add_sink(lambda record: counts.append(  # another connection sees it: committed
            sqlite3.connect(db_path).execute("SELECT count(*) FROM audit").fetchone()[0]))
        log.add_sink(lambda record: counts.append(log.count()))  # would deadlock if sinks ran under the lock
        log.append("decision")
    assert counts == [1, 1]


class Verdict(BaseModel):
    verdict: str
    at: datetime


def test_values_are_reduced_to_json(db_path: Path) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    with AuditLog(db_path) as log:
        record = log.append("guard", inputs={"proposal": Verdict(verdict="allow", at=when), "rules": {"b"}},
                            decision=Verdict(verdict="deny", at=when), at=datetime(2024, 5, 1, 12, 0, 1))
        assert record.inputs == {"proposal": {"verdict": "allow", "at": "2024-05-01T12:00:00Z"}, "rules": ["b"]}
        assert record.decision == {"verdict": "deny", "at": "2024-05-01T12:00:00Z"}
        assert record.at == datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone.utc)  # naive is taken as UTC
        assert log.records() == [record]
    assert verify_file(db_path).ok


def test_an_unserialisable_value_is_refused_without_taking_a_seq(db_path: Path) -> None:
    with AuditLog(db_path) as log:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            log.append("guard", inputs={"lock": threading.Lock()})
        with pytest.raises(ValueError):
            log.append("guard", versions={"model": None})
        assert log.count() == 0
        assert log.append("guard").seq == 1


def test_queries_filter_by_incident_kind_and_seq(db_path: Path) -> None:
    with AuditLog(db_path) as log:
        for i in range(6):
            log.append("propose" if i % 2 else "guard", incident_id=f"inc-{i % 3}")
        assert [r.seq for r in log.records(incident_id="inc-0")] == [1, 4]
        assert [r.seq for r in log.records(kind="guard")] == [1, 3, 5]
        assert [r.seq for r in log.records(kind="guard", incident_id="inc-2")] == [3]
        assert [r.seq for r in log.records(since_seq=4)] == [5, 6]
        assert [r.seq for r in log.records(limit=2)] == [1, 2]
        assert log.last().seq == 6 and log.count() == 6


def test_an_empty_log_has_no_last_record(db_path: Path) -> None:
    with AuditLog(db_path) as log:
        assert log.last() is None and log.count() == 0 and log.records() == []


def test_problem_kinds_are_checked() -> None:
    with pytest.raises(ValueError):
        Problem(seq=1, kind="vanished", detail="")
