"""Escalation policy files (rules/_escalation.py): read, checked at file:line:column, and part of
`rtem rules check`. Fast: no process is started."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from rules import RulesError, check_rules, load_escalation, packaged_policy, packaged_rules_dir

runner = CliRunner()

GOOD = """\
version: 1
quiet_hours: {timezone: America/New_York, start: "21:00", end: "08:00", min_severity: critical}
routes:
  - id: payments
    match: {services: [payments], severity: [error, critical]}
    repeat_every: 5m
    escalate_after: 20m
    levels:
      - receivers: [pagerduty, "rotation:payments"]
      - receivers: [slack, "person:alice@example.com"]
  - id: rest
    levels: [{receivers: [webhook]}]
"""


def write(tmp_path: Path, text: str, name: str = "escalation.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_policy_reads_into_routes_levels_and_quiet_hours(tmp_path):
    policy = load_escalation(write(tmp_path, GOOD))
    payments, rest = policy.routes
    assert payments.repeat_every_s == 300 and payments.escalate_after_s == 1200
    assert [level.receivers for level in payments.levels] == [("pagerduty", "rotation:payments"),
                                                             ("slack", "person:alice@example.com")]
    assert payments.line == 4 and rest.repeat_every_s is None
    assert policy.route("critical", {"payments"}) is payments
    assert policy.route("warning", {"payments"}) is rest  # severity does not match the first route
    assert policy.quiet_hours.timezone == "America/New_York" and policy.digest


def test_the_shipped_policy_passes_the_check():
    policy = load_escalation(packaged_policy())
    assert {r.id for r in policy.routes} == {"payments", "default"}
    report = check_rules(packaged_rules_dir())
    assert report.ok, [str(f) for f in report.findings]
    assert report.escalation is not None and report.counts()["escalation_routes"] == 2


@pytest.mark.parametrize("broken, line, column, words", [
    (GOOD.replace("repeat_every: 5m", "repeat_every: 5 minutes"), 6, 5, "not valid"),
    (GOOD.replace("America/New_York", "Mars/Olympus"), 2, 15, "unknown time zone"),
    (GOOD.replace("  - id: rest", "  - id: payments"), 11, 5, "duplicate route id"),
    (GOOD.replace("    escalate_after: 20m\n", ""), 9, 9, "no escalate_after"),
    (GOOD.replace("levels: [{receivers: [webhook]}]", "levels: [{receivers: [webhook]}]\n    colour: red"), 13, 5,
     "unknown field 'colour'"),
    (GOOD.replace('end: "08:00"', 'end: "21:00"'), 2, 59, "same time"),
])
def test_a_bad_policy_names_file_line_and_column(tmp_path, broken, line, column, words):
    path = write(tmp_path, broken)
    with pytest.raises(RulesError) as caught:
        load_escalation(path)
    error = caught.value
    assert (error.file, error.line) == (str(path), line), str(error)
    assert error.column == column, str(error)
    assert words in str(error)


def test_rules_check_on_a_bad_policy_exits_non_zero_naming_file_and_line(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(packaged_rules_dir() / "guardrails", root / "guardrails")
    shutil.copytree(packaged_rules_dir() / "detect", root / "detect")
    path = write(root, GOOD.replace("America/New_York", "Mars/Olympus"))
    result = runner.invoke(app, ["rules", "check", str(root)])
    assert result.exit_code == 1, result.output
    assert f"{path}:2:15" in result.output and "unknown time zone" in result.output
    single = runner.invoke(app, ["rules", "check", str(path), "--json"])
    assert single.exit_code == 1
    finding = json.loads(single.stdout)["findings"][0]
    assert (finding["file"], finding["line"], finding["kind"]) == (str(path), 2, "escalation")
    path.write_text(GOOD)
    assert runner.invoke(app, ["rules", "check", str(root)]).exit_code == 0


def test_quiet_hours_run_past_midnight_in_their_own_time_zone(tmp_path):
    quiet = load_escalation(write(tmp_path, GOOD)).quiet_hours
    # 02:30 UTC is 21:30 in New York (EST, UTC-5): quiet; 13:00 UTC is 08:00 there: not.
    assert quiet.holds("error", datetime(2026, 1, 15, 2, 30, tzinfo=timezone.utc))
    assert not quiet.holds("error", datetime(2026, 1, 15, 13, 0, tzinfo=timezone.utc))
    assert not quiet.holds("critical", datetime(2026, 1, 15, 2, 30, tzinfo=timezone.utc))  # at the threshold
