"""Issue 11, finding 10: retention. `purge` deletes old events, checkpoints and audit records and records that
it did; the audit log still verifies; the DLQ and AUDIT streams carry age and size limits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog, verify_file
from agent.cli import app
from agent.config import Settings
from agent.store import IncidentStore, RetentionPolicy, event_row, purge
from agent.store import _retention as retention
from bus import AUDIT, DLQ, EVENTS, Event
from bus._streams import stream_configs

runner = CliRunner()
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
POLICY = RetentionPolicy(events_days=30, checkpoints_days=7, audit_days=400)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def add_incident(store: IncidentStore, incident_id: str, status: str, *, closed_days_ago: float,
                 events: int = 3) -> None:
    t0 = ago(closed_days_ago + 1)
    rows = [Event(id=f"{incident_id}-e{i}", source="/t", type="rtem.log.error", time=t0 + timedelta(seconds=i),
                  subject="cart", severity="error") for i in range(events)]
    store.upsert_incident({"id": incident_id, "first_ts": rows[0].ts, "last_ts": rows[-1].ts, "severity": "error",
                           "entities": ["cart"], "detections": ["d"], "signals": 1})
    store.insert_events([event_row(e, incident_id, [], ago(closed_days_ago).isoformat()) for e in rows])
    store.save_diagnosis(incident_id, status=status, root_causes=[], actions=[], versions={})
    # The close, in wall time (save_diagnosis stamps the real clock).
    with store.db.write() as conn:
        conn.execute("UPDATE incidents SET diagnosed_at = ? WHERE id = ?", [ago(closed_days_ago).isoformat(),
                                                                          incident_id])


def add_unattached(store: IncidentStore, event_id: str, days_ago: float) -> None:
    event = Event(id=event_id, source="/t", type="rtem.metric.sample", time=ago(days_ago), subject="cart")
    store.insert_events([event_row(event, None, [], ago(days_ago).isoformat())])


def add_checkpoints(path: Path, threads: list[str]) -> None:
    """LangGraph's own tables (made by its saver), with two checkpoints and a pending write per thread."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def setup() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            await saver.setup()
    asyncio.run(setup())
    conn = sqlite3.connect(path)
    for thread in threads:
        for n in range(2):
            conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_id, checkpoint) VALUES (?, ?, x'00')",
                         [thread, f"c{n}"])
        conn.execute("INSERT INTO writes (thread_id, checkpoint_id, task_id, idx, channel) "
                     "VALUES (?, 'c1', 't', 0, 'x')", [thread])
    conn.commit()
    conn.close()


def audit_history(path: Path) -> None:
    """Records 500, 450 and 300 days old, then one of today."""
    with AuditLog(path) as audit:
        for days in (500, 450, 300):
            audit.append("incident.opened", incident_id=f"inc-{days}", at=ago(days))
        audit.append("incident.opened", incident_id="inc-now", at=NOW)


def fill(store: IncidentStore) -> None:
    """Two incidents closed over 30 days ago (5 events), one closed 10 days ago, one open for 60 days, and an
    old and a new event of no incident."""
    add_incident(store, "old-closed", "resolved", closed_days_ago=40)
    add_incident(store, "old-escalated", "escalated", closed_days_ago=31, events=2)
    add_incident(store, "new-closed", "resolved", closed_days_ago=10)
    add_incident(store, "old-open", "awaiting_approval", closed_days_ago=60)
    add_unattached(store, "u-old", 45)
    add_unattached(store, "u-new", 1)


KEPT = {"new-closed-e0", "new-closed-e1", "new-closed-e2", "old-open-e0", "old-open-e1", "old-open-e2", "u-new"}
THREADS = ["old-closed", "old-escalated", "new-closed", "old-open"]


@pytest.fixture
def db(tmp_path) -> Path:
    """The store, its checkpoints and its audit log, in SQLite files."""
    path = tmp_path / "rtem.db"
    store = IncidentStore(path)
    fill(store)
    store.close()
    add_checkpoints(tmp_path / "checkpoints.db", THREADS)
    audit_history(path)
    return path


@pytest.fixture
def store(backend):
    """The store alone, on either backend."""
    store = IncidentStore(backend)
    fill(store)
    yield store
    store.close()


def run_purge(path: Path, **kwargs):
    store = IncidentStore(path)
    try:
        with AuditLog(path) as audit:
            return purge(store, audit, POLICY, now=NOW, actor="tester@host", **kwargs)
    finally:
        store.close()


def purge_store(store: IncidentStore, tmp_path: Path, **kwargs):
    """A purge of `store` on either backend, with an audit log in a SQLite file of its own (the AuditLog
    is on SQLite only)."""
    with AuditLog(tmp_path / "audit.db") as audit:
        return purge(store, audit, POLICY, now=NOW, **kwargs)


def event_ids(path: Path) -> set[str]:
    return {row[0] for row in sqlite3.connect(path).execute("SELECT id FROM events")}


def stored_ids(store: IncidentStore) -> set[str]:
    return {row[0] for row in store.db.connection().execute("SELECT id FROM events")}


def threads(path: Path) -> dict[str, int]:
    """Checkpoint rows per thread in checkpoints.db beside `path`."""
    conn = sqlite3.connect(path.with_name("checkpoints.db"))
    return dict(conn.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id"))


# -- the purge --------------------------------------------------------------------------------------------


def test_purge_deletes_only_what_the_policy_no_longer_keeps(db):
    report = run_purge(db)

    assert event_ids(db) == KEPT
    assert (report.incidents, report.events, report.unattached_events) == (2, 5, 1)
    # Checkpoints: closed more than 7 days ago (new-closed was closed 10 days ago), never an open incident's.
    assert threads(db) == {"old-open": 2}
    assert (report.checkpoint_threads, report.checkpoints) == (3, 9)
    # Incident rows stay: they say what happened.
    assert len(sqlite3.connect(db).execute("SELECT id FROM incidents").fetchall()) == 4


def test_the_store_is_purged_on_either_backend(store, tmp_path):
    report = purge_store(store, tmp_path)
    assert stored_ids(store) == KEPT
    assert (report.incidents, report.events, report.unattached_events) == (2, 5, 1)
    # No checkpoints.db beside the SQLite file, and no graph ever made its checkpoint tables in the PostgreSQL
    # database (tests/test_retention_postgres.py purges them there): nothing purged.
    assert (report.checkpoint_threads, report.checkpoints) == (0, 0)
    assert store.db.connection().execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 4


def test_a_checkpoints_file_passed_in_is_purged_whatever_the_store(store, tmp_path):
    checkpoints = tmp_path / "graph" / "checkpoints.db"
    checkpoints.parent.mkdir()
    add_checkpoints(checkpoints, THREADS)
    report = purge_store(store, tmp_path, checkpoints=checkpoints)
    assert threads(checkpoints) == {"old-open": 2}
    assert (report.checkpoint_threads, report.checkpoints) == (3, 9)


def test_a_dry_run_of_the_store_counts_and_changes_nothing(store, tmp_path):
    before = stored_ids(store)
    report = purge_store(store, tmp_path, dry_run=True)
    assert (report.incidents, report.events, report.unattached_events) == (2, 5, 1)
    assert stored_ids(store) == before


def test_a_batch_of_events_spans_closed_incidents(store, tmp_path, monkeypatch):
    """Review note: one transaction per incident made a purge of many small incidents many transactions."""
    monkeypatch.setattr(retention, "BATCH", 2)
    seen: list[tuple[str, int]] = []
    report = purge_store(store, tmp_path, progress=lambda what, rows: seen.append((what, rows)))
    # 3 + 2 events in batches of 2, 2 and 1 (one incident at a time would take 2, 1 and 2)
    assert seen == [("events", 2), ("events", 4), ("events", 5), ("unattached events", 1)]
    assert report.events == 5 and stored_ids(store) == KEPT


def test_purge_deletes_old_audit_records_and_the_log_still_verifies(db):
    report = run_purge(db)

    with AuditLog(db) as audit:
        left = audit.records()
        assert [r.incident_id for r in left] == ["inc-300", "inc-now", None]
        assert report.audit_records == 2 and report.audit_anchor["seq"] == 2
        purged = left[-1]
        assert purged.kind == "retention.purged" and purged.seq == report.audit_seq == 5
        assert purged.decision["events"] == 5 and purged.decision["unattached_events"] == 1
        assert purged.decision["checkpoints"] == 9
        assert purged.decision["audit"] == {"purged": 2, "anchor": report.audit_anchor}
        assert purged.inputs["by"] == "tester@host"
        audit.append("after.purge")  # the chain goes on
    verified = verify_file(db)
    assert verified.ok, verified.problems
    assert verified.anchor_seq == 2 and verified.records == 4
    assert "seq 1–2 purged by retention" in verified.summary()


def test_a_second_purge_moves_the_anchor_on_and_still_verifies(db):
    run_purge(db)
    store = IncidentStore(db)
    with AuditLog(db) as audit:
        second = purge(store, audit, RetentionPolicy(audit_days=100), now=NOW)
    store.close()
    assert second.audit_records == 1 and second.audit_anchor["seq"] == 3
    assert verify_file(db).ok


def test_a_dry_run_counts_and_changes_nothing(db):
    before = (event_ids(db), threads(db), sqlite3.connect(db).execute("SELECT COUNT(*) FROM audit").fetchone())
    report = run_purge(db, dry_run=True)
    assert (report.events, report.unattached_events, report.checkpoints, report.audit_records) == (5, 1, 9, 2)
    assert report.audit_anchor == {"seq": 2} and report.audit_seq is None
    assert (event_ids(db), threads(db), sqlite3.connect(db).execute("SELECT COUNT(*) FROM audit").fetchone()) == before


def test_a_purge_with_nothing_to_delete_is_still_recorded(tmp_path):
    path = tmp_path / "rtem.db"
    IncidentStore(path).close()
    report = run_purge(path)
    assert report.counts() == dict.fromkeys(report.counts(), 0)
    with AuditLog(path) as audit:
        assert [r.kind for r in audit.records()] == ["retention.purged"]
    assert verify_file(path).ok


def test_a_young_record_between_old_ones_stops_the_audit_purge_there(tmp_path):
    path = tmp_path / "rtem.db"
    with AuditLog(path) as audit:  # clocks of two processes disagree: seq order is not time order
        for days in (500, 10, 500):
            audit.append("x", at=ago(days))
        assert audit.purgeable(ago(400)) == (1, 1)


# -- the anchor cannot hide a deletion ---------------------------------------------------------------------


def test_deleting_above_the_anchor_is_still_refused(db):
    run_purge(db)
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_anchor SET seq = 1")  # backwards
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_anchor SET seq = 4, hash = 'made-up'")
    conn.close()


def test_moving_the_anchor_by_hand_to_delete_records_is_reported(tmp_path):
    path = tmp_path / "rtem.db"
    audit_history(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE audit_anchor SET seq = 2, hash = (SELECT hash FROM audit WHERE seq = 2)")
    conn.execute("DELETE FROM audit WHERE seq <= 2")  # the triggers allow it below the anchor ...
    conn.commit()
    conn.close()
    report = verify_file(path)  # ... but no retention.purged record names that anchor
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "deleted")]
    assert "deleted by hand" in report.problems[0].detail


def test_a_log_made_before_retention_is_migrated_and_can_be_purged(tmp_path):
    path = tmp_path / "rtem.db"
    audit_history(path)
    # The triggers and tables of a log from before retention, which was before versioned schemas too.
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER audit_no_delete; DROP TRIGGER audit_anchor_forward_only; "
                       "DROP TRIGGER audit_anchor_no_delete; DROP TRIGGER audit_anchor_single; DROP TABLE audit_anchor;"
                       "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                       "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;"
                       "DELETE FROM schema_versions WHERE component = 'audit';")
    conn.close()
    assert verify_file(path).ok
    report = run_purge(path)
    assert report.audit_records == 2 and verify_file(path).ok


# -- the command -----------------------------------------------------------------------------------------


def test_rtem_purge_dry_run_then_purge(db, monkeypatch):
    # The CLI purges by the real clock: make the records and events old relative to it.
    monkeypatch.setenv("RTEM_RETAIN_AUDIT_DAYS", str((datetime.now(timezone.utc) - ago(400)).days + 1))
    dry = runner.invoke(app, ["purge", "--dry-run", "--json", "--db", str(db)])
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and doc["events"] >= 5 and doc["audit_records"] == 2
    assert len(event_ids(db)) == 13

    done = runner.invoke(app, ["purge", "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert "purged" in done.stdout and "events of closed incidents" in done.stdout and "retention.purged" in done.stdout
    assert verify_file(db).ok
    with AuditLog(db) as audit:
        record = audit.records(kind="retention.purged")[-1]
    assert "@" in record.inputs["by"]  # user@host


def test_rtem_purge_without_a_store_says_so(tmp_path):
    result = runner.invoke(app, ["purge", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no store here" in result.output


# -- the streams ------------------------------------------------------------------------------------------


def test_dlq_and_audit_streams_expire_by_age_and_size():
    bus_settings = Settings(retain_dlq_days=3, retain_audit_days=90).bus_settings()
    configs = {c.name: c for c in stream_configs(bus_settings)}
    assert configs[DLQ].max_age == 3 * 86400 and configs[AUDIT].max_age == 90 * 86400
    assert configs[DLQ].max_bytes > 0 and configs[AUDIT].max_bytes > configs[DLQ].max_bytes
    # EVENTS is bounded too, but full it refuses new events: unread ones are never dropped for size
    assert configs[EVENTS].max_bytes == bus_settings.events_max_bytes > 0
    assert configs[EVENTS].max_msgs == bus_settings.events_max_msgs > 0
    assert configs[EVENTS].discard == "new"


@pytest.mark.integration
async def test_ensure_streams_applies_the_limits_to_streams_made_before_them(bus):
    from nats.js import api

    for name in (DLQ, AUDIT):  # as an older rtem made them: no limits
        await bus.js.delete_stream(name)
        await bus.js.add_stream(api.StreamConfig(name=name, subjects=[f"rtem.{name.lower()}.>"],
                                                 storage=api.StorageType.FILE))
    await bus.dead_letter(b"x", "kept across the update")
    await bus.ensure_streams()
    for name in (DLQ, AUDIT):
        info = await bus.js.stream_info(name)
        assert info.config.max_age == pytest.approx({DLQ: 14, AUDIT: 400}[name] * 86400)
        assert info.config.max_bytes and info.config.max_bytes > 0
    assert (await bus.js.stream_info(DLQ)).state.messages == 1


@pytest.mark.integration
async def test_rtem_run_purges_by_the_retention_settings_on_its_own(tmp_path, nats_server, boutique):
    from agent.run import Service
    from tests.live import wait_for

    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_server.url)
    service = await Service(settings, boutique, poll_s=0.05, retention_every_s=0.2).start()
    try:
        await wait_for(lambda: len(service.parts.audit.records(kind="retention.purged")) >= 2, 20)
        first = service.parts.audit.records(kind="retention.purged")[0]
        assert first.inputs["by"] == "rtem run" and first.inputs["policy"]["events_days"] == settings.retain_events_days
    finally:
        await service.stop()
