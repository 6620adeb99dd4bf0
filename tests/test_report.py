"""Rationale reports rebuilt from the store and audit log: a live run (executed, resolved) and a dry-run analysis;
and the report's parts that need no run: shares and margins, reasons said once, counts explained, the chart."""

import html as html_lib
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.models import DecisionRecord
from agent.report import build_report
from agent.report_chart import timeline_svg
from agent.report_scores import score_causes, share_text
from agent.report_wording import approver_text, merge_reasons, signals_text, split_reasons
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


@pytest.mark.integration  # live_db runs the service on a real NATS
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

    check_clocks(md, records[:-1])
    check_hypotheses(md)

    html = build(live_db, row["id"], "html")
    assert html == build(live_db, row["id"], "html")
    assert {"svg", "rect", "circle", "table"} <= well_formed(html)
    check_chart(re.search(r"<svg.*?</svg>", html, re.S).group(0))
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


@pytest.mark.integration  # live_db runs the service on a real NATS
async def test_a_refused_failover_names_every_rule(live_db):
    store = IncidentStore(live_db, readonly=True)
    row = next(r for r in store.incidents() if any(a["type"] == "failover_database" for a in r["actions"]))
    md = build(live_db, row["id"])
    assert "#0 failover_database on productcatalog: deny" in md
    assert "`no-failover-while-replica-lags`" in md and "replica lag" in md
    failover = md.split("### #0 failover_database")[1].split("###")[0]
    # contract.approval and high-risk-needs-approval give one ground: said once, with both rules
    assert "requires approval; The action is rated high risk" not in md
    reasons = next(line for line in failover.splitlines() if line.startswith("- **Reasons:**"))
    assert reasons.count("high risk") == 1 and "contract.approval" in reasons and "high-risk-needs-approval" in reasons
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
    assert "must be approved by a person with the role approver (or an admin)" in md
    check_hypotheses(md)
    check_counts(md, db, incident_id)
    with AuditLog(db) as audit:
        check_clocks(md, audit.records(incident_id=incident_id))
    assert "`high-risk-needs-approval`" in md and "dry run" in md
    assert "<svg" in (tmp_path / "a.html").read_text()
    missing = runner.invoke(app, ["report", "inc-nope", "--db", str(db)])
    assert missing.exit_code == 1 and "no incident" in missing.output


def test_an_unknown_format_is_refused():
    from agent.report import Report, render
    report = Report("x", {}, [], 0, [], [], [], [], [], [], [], {}, {})
    with pytest.raises(ValueError, match="unknown report format"):
        render(report, "pdf")


# -- what every report must say ------------------------------------------------------------------------

def _rows(md: str, section: str) -> list[list[str]]:
    body = md.split(f"## {section}")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| seq") and not line.startswith("|---")]


def check_clocks(md: str, records: list) -> None:
    """Decisions carry the event time rtem had read, and no decision is placed before the first event."""
    assert "| seq | at (wall clock) | events read up to (event time) |" in md
    assert "**Two clocks:** Event times are the producers' timestamps; decision times are rtem's wall clock." in md
    first_event = re.search(r"\*\*Events, in event time \(UTC\):\*\* first (\S+)", md).group(1)
    rows = {int(r[0]): r for r in _rows(md, "Decisions")}
    assert sorted(rows) == [r.seq for r in records if r.kind != "report.written"]
    opened = next(r for r in records if r.kind == "incident.opened")
    assert rows[opened.seq][2] != "-", "the opening decision is placed on the events' clock"
    assert rows[opened.seq][2] >= first_event, f"incident.opened read up to {rows[opened.seq][2]}, before {first_event}"
    read = [rows[seq][2] for seq in sorted(rows) if rows[seq][2] != "-"]
    assert read == sorted(read), "rtem never reads backwards in event time"


def check_hypotheses(md: str) -> None:
    """Shares with the digits they need and margins: never a row of bare 0.00s."""
    lines = [line for line in md.split("## Hypotheses")[1].split("## Proposed")[0].splitlines()
             if re.match(r"\d+\. \*\*", line)]
    assert lines
    for n, line in enumerate(map(html_lib.unescape, lines), 1):
        assert "confidence" not in line and "0.00" not in line and not re.search(r"share 0%", line), line
        assert re.search(r"share ([<>] )?[\d.]+%", line), line
        if len(lines) > 1:
            assert re.search(r"[\d.]+ nats \(>? ?[\d,.e+]+×\) " + ("ahead of #2" if n == 1 else "behind #1"), line), line


def check_counts(md: str, db, incident_id: str) -> None:
    """The two counts say what they count, from the stored events."""
    rows = sqlite3.connect(db).execute("SELECT signals FROM events WHERE incident_id=?", [incident_id]).fetchall()
    per_event = [json.loads(s) if s else [] for (s,) in rows]
    several = sum(1 for d in per_event if len(d) > 1)
    events = re.search(r"\*\*Events:\*\* (.*)", md).group(1)
    signals = re.search(r"\*\*Signals:\*\* (.*)", md).group(1)
    assert events.startswith(f"{len(per_event)} events correlated into this incident"), events
    assert signals.startswith(f"{sum(map(len, per_event))} detection signals, one per detection rule that fired"), signals
    if several:
        assert f"{several} events matched more than one detection" in signals


def check_chart(svg: str) -> None:
    """Two panels, each on its own labelled and ticked axis, and a legend."""
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    axes = {g.get("data-axis"): g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "axis"}
    assert set(axes) == {"event-time", "wall-clock"}
    titles = {name: "".join(g.find("s:text[@class='axis-title']", ns).itertext()) for name, g in axes.items()}
    assert titles["event-time"].startswith("event time, UTC") and titles["wall-clock"].startswith("rtem's wall clock, UTC")
    for g in axes.values():
        ticks = [t.text for t in g.findall("s:text[@class='tick']", ns)]
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks
    legend = next(g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "legend")
    assert "decision record" in "".join(legend.itertext())


# -- the parts, without a run ---------------------------------------------------------------------------

def test_a_clear_winner_reads_as_shares_and_margins_not_one_and_zeros():
    causes = [{"entity": "orders-db", "confidence": 1.0, "explanation": "… score 5.10 = evidence 6.0 + level prior -0.9."},
              {"entity": "orders", "confidence": 0.0, "explanation": "… score -6.10 = evidence 1.0 + level prior -7.1."},
              {"entity": "orders-0", "confidence": 0.0, "explanation": "no stated score"}]
    top, second, third = score_causes(causes)
    assert (top.share_text, second.share_text) == ("> 99.99%", "< 0.005%")
    assert top.margin.source == "scores" and round(top.margin.nats, 2) == 11.2 and top.margin == second.margin
    assert top.margin.text == "11.2 nats (73,130×)"
    assert third.margin.source == "bound" and third.margin.text.startswith("> 9.9 nats (> ")


def test_margins_come_from_shares_without_scores_and_ignore_a_learned_rescoring():
    causes = [{"confidence": 0.5325, "explanation": "score 9.00 = evidence 1 + level prior 8. Learned: x."},
              {"confidence": 0.0726, "explanation": "score 1.00 = evidence 1 + level prior 0."}]
    top, second = score_causes(causes)
    assert top.margin.source == "shares" and abs(top.margin.nats - 1.9927) < 0.001
    assert [share_text(v) for v in (0.5325, 0.0726, 0.0008, 0.9997)] == ["53%", "7.3%", "0.08%", "99.97%"]
    assert score_causes([{"confidence": 0.9}])[0].margin is None


def test_one_ground_is_one_reason():
    rules = ["contract.approval", "high-risk-needs-approval", "no-failover-while-replica-lags"]
    reasons = ["the failover_database contract (high risk) requires approval",
               "The action is rated high risk; a person must approve it.", "The replica lags by 45 s."]
    merged = merge_reasons(rules, reasons)
    assert [(m.text, m.rules) for m in merged] == [
        ("The action is rated high risk; a person must approve it.", ("contract.approval", "high-risk-needs-approval")),
        ("The replica lags by 45 s.", ("no-failover-while-replica-lags",))]
    assert len(merge_reasons(["a", "b"], ["Same words.", "same words"])) == 1
    assert split_reasons("the drain_host contract (high risk) requires approval; The action is rated high risk; "
                         "a person must approve it.") == ["The action is rated high risk; a person must approve it."]
    assert approver_text("approver") == "a person with the role approver (or an admin)"
    assert approver_text("admin") == "an admin"


def test_the_counts_say_what_they_count():
    said = signals_text(5, 6, [["trace-anomaly", "error-event"], ["trace-anomaly"], ["trace-anomaly"], [], ["x"]])
    assert said["events"] == "5 events correlated into this incident"
    assert said["signals"] == ("6 detection signals, one per detection rule that fired on an event (1 event matched "
                               "more than one detection; 1 matched none: context such as samples, changes or logs)")
    assert said["by_detection"] == "trace-anomaly 3, error-event 1, x 1"
    assert "3 of them still stored" in signals_text(4, 2, [["a"], ["b"], []])["events"]


def test_the_chart_puts_each_clock_on_its_own_axis():
    """Events a year before the decisions (a replay): each panel spans its own clock, so neither is squashed."""
    t0 = datetime(2022, 3, 20, 0, 48, tzinfo=timezone.utc).timestamp()
    groups = [{"type": "rtem.metric.anomaly", "subject": f"svc-{n}", "severity": sev, "count": n + 1,
               "first_ts": t0 + 30 * n, "last_ts": t0 + 30 * n + 60, "first": "a", "last": "b"}
              for n, sev in enumerate(["warning", "error", "critical", None])]
    at = datetime(2026, 12, 3, 18, 55, tzinfo=timezone.utc)
    records = [DecisionRecord(seq=n, at=at + timedelta(milliseconds=150 * n), kind=kind, node=node, prev_hash="0", hash="0")
               for n, (kind, node) in enumerate([("incident.opened", "correlate"), ("causes.ranked", "diagnose"),
                                                 ("action.verdict", "guard")], 1)]
    svg = timeline_svg(groups, records)
    check_chart(svg)
    root = ET.fromstring(svg)
    ticks = {g.get("data-axis"): [t.text for t in g if t.get("class") == "tick"]
             for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "axis"}
    assert ticks["event-time"][0].startswith("00:4") or ticks["event-time"][0].startswith("00:5")
    assert all(re.fullmatch(r"18:55:0\d\.\d", t) for t in ticks["wall-clock"]), ticks["wall-clock"]  # sub-second
    circles = [float(c.get("cx")) for c in root.iter("{http://www.w3.org/2000/svg}circle") if c.find("{*}title") is not None]
    assert len(circles) == 3 and circles[0] < circles[1] < circles[2], "decisions spread on their own clock"
    text = "".join(root.itertext())
    assert "2022-03-20" in text and "2026-12-03" in text and "svc-3 ×4" in text
