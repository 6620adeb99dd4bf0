"""Issue 11, finding 8: what rtem writes is private (data dir 0700, SQLite files 0600), and a report shows an
event's raw HTML as text instead of running it."""

from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.config import Settings
from agent.ledger import Ledger
from agent.report import build_report, markdown_code
from agent.service import build
from agent.store import IncidentStore, event_row
from bus import Event
from tests.helpers import T0

runner = CliRunner()
pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>[click](javascript:alert(3))'


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if re.search(r"\.db(-wal|-shm|-journal)?$", p.name))


# -- files ------------------------------------------------------------------------------------------------


def test_build_makes_the_data_dir_and_every_sqlite_file_private(tmp_path, shop):
    old = os.umask(0o022)  # the usual umask, under which files were 0644
    try:
        data = tmp_path / "data"
        parts = build(Settings(data_dir=data), shop)
        parts.audit.append("test.record")  # a write: SQLite makes -wal and -shm now
        parts.store.save_state("k", 1)
        files = sqlite_files(data)
        names = {p.name for p in files}
        assert {"rtem.db", "rtem.db-wal", "rtem.db-shm", "checkpoints.db"} <= names
        assert mode(data) == 0o700
        assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
        parts.store.close()
        parts.audit.close()
        parts.ledger.close()
    finally:
        os.umask(old)


def test_files_an_older_rtem_left_readable_are_tightened(tmp_path, shop):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    for name in ("rtem.db", "rtem.db-wal", "checkpoints.db"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    parts = build(Settings(data_dir=data), shop)
    try:
        assert mode(data) == 0o700
        for name in ("rtem.db", "rtem.db-wal", "checkpoints.db"):
            assert mode(data / name) == 0o600, name
    finally:
        parts.store.close()
        parts.audit.close()
        parts.ledger.close()


@pytest.mark.parametrize("opener", ["store", "audit", "ledger"])
def test_each_opener_creates_its_database_private(tmp_path, opener):
    path = tmp_path / "sub" / "rtem.db"
    path.parent.mkdir()
    old = os.umask(0o022)
    try:
        if opener == "store":
            thing = IncidentStore(path)
            thing.save_state("k", 1)
        elif opener == "audit":
            thing = AuditLog(path)
            thing.append("test.record")
        else:
            thing = Ledger(path)
            thing.set_paused(True, "me")
        assert [oct(mode(p)) for p in sqlite_files(path.parent)] == [oct(0o600)] * len(sqlite_files(path.parent))
        assert path.with_name("rtem.db-wal").exists()
        thing.close()
    finally:
        os.umask(old)


def test_rtem_tokens_create_keeps_its_hashes_private(tmp_path, monkeypatch):
    data = tmp_path / "fresh"
    monkeypatch.setenv("RTEM_DATA_DIR", str(data))
    result = runner.invoke(app, ["tokens", "create", "ci-bot", "--role", "viewer"])
    assert result.exit_code == 0, result.output
    assert mode(data) == 0o700
    assert all(mode(p) == 0o600 for p in sqlite_files(data)) and (data / "rtem.db").exists()


# -- reports ----------------------------------------------------------------------------------------------


def evil_incident(path: Path) -> str:
    """An incident whose events, subject and recorded reasons carry HTML, as a hostile producer sends."""
    store = IncidentStore(path)
    events = [Event(id=f"ev-{i}`<b>", source="/evil", type="rtem.log.error", time=T0 + timedelta(seconds=i),
                    subject="cart<script>", severity="error", message=EVIL, attributes={"x": EVIL})
              for i in range(2)]
    store.upsert_incident({"id": "inc-evil", "first_ts": events[0].ts, "last_ts": events[-1].ts,
                           "severity": "error", "entities": ["cart<script>"], "detections": ["d<i>"], "signals": 1})
    store.insert_events([event_row(e, "inc-evil", [], "2026-01-01T00:00:00+00:00") for e in events])
    cause = {"entity": "cart<script>", "fault_type": "x", "confidence": 0.9, "evidence": ["ev-0`<b>"],
             "explanation": EVIL}
    action = {"index": 0, "type": "restart", "target": "cart<script>", "params": {"why": EVIL}, "verdict": "deny",
              "reason": EVIL, "rules": ["r`<u>`"], "status": "blocked"}
    store.save_diagnosis("inc-evil", status="escalated", root_causes=[cause], actions=[action],
                         versions={"ruleset": EVIL})
    with AuditLog(path) as audit:
        audit.append("causes.ranked", incident_id="inc-evil", decision={"root_causes": [cause]}, reasons=[EVIL])
        audit.append("action.executed", incident_id="inc-evil", inputs={"action": "#0 restart", "idempotency_key":
                     "k`<x>`"}, decision={"ok": False, "result": EVIL}, reasons=[EVIL])
    store.close()
    return "inc-evil"


def rendered(path: Path, fmt: str) -> str:
    incident_id = evil_incident(path)
    store = IncidentStore(path, readonly=True)
    with AuditLog(path) as audit:
        text = build_report(store, audit, incident_id).render(fmt)
    store.close()
    return text


def outside_code_spans(markdown: str) -> str:
    """The Markdown with every code span taken out (CommonMark: a run of n backticks closes at the next run of
    exactly n), i.e. the text a renderer would parse for HTML."""
    return re.sub(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", " ", markdown)


def test_the_markdown_report_shows_raw_html_as_text(tmp_path):
    md = rendered(tmp_path / "rtem.db", "md")
    text = outside_code_spans(md)
    assert "<" not in text, [line for line in text.splitlines() if "<" in line][:3]
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in md  # shown, as the characters, once rendered
    assert "``ev-0`<b>``" in md  # a backtick in a value cannot close its code span early
    assert not re.search(r"(?<!\\)\]\(javascript:", text) and "\\[click\\](javascript:alert(3))" in md, \
        "a link in an event is shown as text, not made a link"


def test_a_code_span_holds_any_value():
    assert markdown_code("a`b") == "``a`b``"
    assert markdown_code("`x`") == "`` `x` ``"
    assert markdown_code("a|b\nc", cell=True) == "`a\\|b c`"


def test_the_html_report_is_autoescaped(tmp_path):
    html = rendered(tmp_path / "rtem.db", "html")
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
