"""Rationale reports rebuilt from the store and audit log: a live run (executed, resolved) and a dry-run analysis."""

import sqlite3
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.report import build_report
from agent.store import IncidentStore
from tests.helpers import RECORDING, analyze

runner = CliRunner()


def build(db, incident_id, fmt="md"):
    with AuditLog(db) as audit:
        return build_report(IncidentStore(db, readonly=True), audit, incident_id).render(fmt)


class _Checker(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element."""

    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.add(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def well_formed(html: str) -> set[str]:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.stack, f"unclosed: {checker.stack}"
    return checker.tags


async def test_a_resolved_incident_is_justified_step_by_step(live_db):
    store = IncidentStore(live_db, readonly=True)
    row = next(r for r in store.incidents() if r["status"] == "resolved")
    md = build(live_db, row["id"])
    assert md == build(live_db, row["id"]), "the same store gives the same report"
    assert f"**{row['root_causes'][0]['entity']}**" in md and row["root_causes"][0]["fault_type"] in md
    for action in row["actions"]:
        assert f"#{action['index']} {action['type']} on {action['target']}: {action['verdict']}" in md
        for rule in action["rules"]:
            assert f"`{rule}`" in md
    with AuditLog(live_db) as audit:
        records = audit.records(incident_id=row["id"])
    assert records[-1].kind == "report.written", "the service wrote the report at close"
    for record in records[:-1]:  # the record of the written report is not part of the report
        assert f"| {record.seq} |" in md and record.kind in md, f"decision seq {record.seq} is in the report"
    executed = [r for r in records if r.kind == "action.executed"]
    assert executed and all(f"`{r.inputs['idempotency_key']}`" in md for r in executed)
    assert "**MTTR (event time):** " in md and "**MTTR (event time):** -" not in md
    for key in ("model", "prompt", "ruleset", "detections", "topology", "reasoner"):
        assert f"| {key} | `" in md, key

    html = build(live_db, row["id"], "html")
    assert html == build(live_db, row["id"], "html")
    assert {"svg", "rect", "circle", "table"} <= well_formed(html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


async def test_a_refused_failover_names_every_rule(live_db):
    store = IncidentStore(live_db, readonly=True)
    row = next(r for r in store.incidents() if any(a["type"] == "failover_database" for a in r["actions"]))
    md = build(live_db, row["id"])
    assert "#0 failover_database on productcatalog: deny" in md
    assert "`no-failover-while-replica-lags`" in md and "replica lag" in md
    ran = md.split("## What ran")[1].split("## Compensations")[0]
    assert "failover_database" not in ran and "escalated" in md


@pytest.mark.integration
def test_the_cli_writes_a_dry_run_report(tmp_path):
    analyze(RECORDING, "--out", tmp_path / "out")
    db = tmp_path / "out" / "run" / "rtem.db"
    [incident_id] = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM incidents WHERE status != 'merged'")]
    for fmt in ("md", "html"):
        first, second = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        for target in (first, second):
            result = runner.invoke(app, ["report", incident_id[:8], "--format", fmt, "--out", str(target), "--db", str(db)])
            assert result.exit_code == 0, result.output
        assert first.read_bytes() == second.read_bytes()
    md = (tmp_path / "a.md").read_text()
    assert "**node-6** — cpu" in md and "drain_host on node-6: require_approval" in md
    assert "`high-risk-needs-approval`" in md and "dry run" in md
    assert "<svg" in (tmp_path / "a.html").read_text()
    missing = runner.invoke(app, ["report", "inc-nope", "--db", str(db)])
    assert missing.exit_code == 1 and "no incident" in missing.output


def test_an_unknown_format_is_refused():
    from agent.report import Report, render
    report = Report("x", {}, [], 0, [], [], [], [], [], [], [], {}, {})
    with pytest.raises(ValueError, match="unknown report format"):
        render(report, "pdf")
