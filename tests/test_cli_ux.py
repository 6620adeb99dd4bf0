"""What a person sees from `rtem` (issue 15, "The command line"): whole incident ids at 80 and 120 columns,
plain unwrapped tables into a pipe, ingest's invalid lines with their line numbers, `analyze DIR`,
`--status` checked, help that reads as prose, and the console's times in UTC.

Terminal output is checked under a real pseudo-terminal (a subprocess: marked integration); pipe output
and help through typer's CliRunner, whose stdout is not a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.incident import IncidentStatus
from agent.store import IncidentStore
from tests.helpers import EXAMPLES, ROOT, cloud_event, write_events

runner = CliRunner()

# Ids as long as real ones (sha-derived): the column must never cut them.
IDS = ["inc-b4d68e3752a1c9f04e7d", "inc-0f3a9c1d2e4b5a6978cd"]
RULE = "contract.approval_required_for_tier1"  # a long token the old piped table split mid-word


@pytest.fixture
def store_db(tmp_path) -> Path:
    """A real SQLite store with two diagnosed incidents (long ids, long rule names) and an audit log."""
    db = tmp_path / "rtem.db"
    store = IncidentStore(db)
    for n, (incident_id, status) in enumerate(zip(IDS, ("resolved", "awaiting_approval"))):
        store.upsert_incident({"id": incident_id, "first_ts": 1.7e9 + n, "last_ts": 1.7e9 + 60, "severity": "critical",
                               "entities": ["payments-1"], "detections": ["error_rate"], "signals": 3})
        store.save_diagnosis(incident_id, status=status, versions={}, root_causes=[
            {"entity": "payments-1", "fault_type": "connection_exhaustion", "confidence": 0.8, "evidence": ["e1"],
             "explanation": "the connection pool is exhausted"}], actions=[
            {"index": 0, "type": "restart_instance", "target": "payments-1", "verdict": "require_approval",
             "params": {}, "executed": False, "status": "awaiting_approval",
             "rules": [RULE, "guard.high_risk_actions_need_a_person"], "reason": "tier 1 requires approval"},
            {"index": 1, "type": "notify_oncall", "target": "payments", "verdict": "allow", "rules": [],
             "params": {}, "executed": True, "status": "done", "reason": "page the owner"}])
    store.close()
    with AuditLog(db):
        pass  # creates the audit table the listing reads
    return db


# -- 1. incident ids, terminal and pipe -------------------------------------------------------------------


def run_in_terminal(args: list[str], columns: int) -> str:
    """`python -m agent ARGS` with its stdout on a pseudo-terminal `columns` wide; the text, ANSI stripped."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent", *args], stdout=slave, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            proc.kill()
            raise AssertionError(f"rtem {' '.join(args)} wrote nothing for 30 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(30) == 0, proc.stderr.read().decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")


@pytest.mark.integration
@pytest.mark.parametrize("columns", [80, 120])
def test_incident_ids_are_never_cut_on_a_terminal(store_db, columns):
    text = run_in_terminal(["incidents", "--db", str(store_db)], columns)
    for incident_id in IDS:
        assert incident_id in text, f"{incident_id} cut at {columns} columns:\n{text}"
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= columns, "the table is wider than the terminal"
    assert "│" in text, "on a terminal it is still a table"


def test_piped_incidents_are_plain_lines_one_per_incident(store_db):
    result = runner.invoke(app, ["incidents", "--db", str(store_db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "opened", "status"]
    assert [line.split()[0] for line in lines[1:]] == IDS, "one line per incident, the id first"
    assert [line.split()[2] for line in lines[1:]] == ["resolved", "awaiting_approval"]
    assert not set("│━┃╇") & set(result.stdout), "no box drawing into a pipe"
    assert "restart_instance:require_approval, notify_oncall:allow" in lines[1], "tokens stay whole"


def test_piped_incident_show_keeps_every_token_whole(store_db):
    result = runner.invoke(app, ["incidents", "show", IDS[1][:10], "--db", str(store_db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert IDS[1] in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.split()[:2] == ["0", "restart_instance"])
    assert "tier 1 requires approval" in row, row
    tokens = set(result.stdout.split())
    assert "payments-1" in tokens and "connection_exhaustion" in tokens


def test_piped_dry_run_actions_keep_rule_names_whole(store_db):
    store = IncidentStore(store_db)
    store.set_status(IDS[0], "diagnosed")  # a dry run's incident lists the rules of each verdict
    store.close()
    result = runner.invoke(app, ["incidents", "show", IDS[0], "--db", str(store_db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert f"{RULE}, guard.high_risk_actions_need_a_person" in result.stdout, result.stdout


def test_audit_list_into_a_pipe_is_plain(store_db):
    with AuditLog(store_db) as audit:
        audit.append("action.verdict", node="guard", incident_id=IDS[0], inputs={}, decision={"outcome": "deny"},
                     reasons=[f"{RULE} says a person decides; " * 3])
    result = runner.invoke(app, ["audit", "list", "--db", str(store_db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[1]
    assert row.split()[2] == IDS[0] and f"{RULE} says a person decides" in row


# -- 2. input checks -------------------------------------------------------------------------------------


def test_a_bogus_status_lists_the_valid_ones_and_exits_2(store_db):
    result = runner.invoke(app, ["incidents", "--db", str(store_db), "--status", "bogus"])
    assert result.exit_code == 2
    for status in IncidentStatus:
        assert status.value in result.output, f"{status.value} not among the valid statuses shown"


def test_a_valid_status_filters(store_db):
    result = runner.invoke(app, ["incidents", "--db", str(store_db), "--status", "awaiting_approval", "--json"])
    assert result.exit_code == 0, result.output
    assert [i["id"] for i in json.loads(result.stdout)["incidents"]] == [IDS[1]]
    none = runner.invoke(app, ["incidents", "--db", str(store_db), "--status", "escalated"])
    assert none.exit_code == 0 and "no escalated incidents" in none.stdout


def test_analyze_a_directory_without_recordings_says_what_it_expects(tmp_path):
    (tmp_path / "notes.txt").write_text("not events")
    result = runner.invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2
    assert "a directory without *.events.jsonl files" in result.output and str(tmp_path) in result.output
    missing = runner.invoke(app, ["analyze", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file or directory" in missing.output


@pytest.mark.integration
def test_analyze_a_directory_analyzes_its_recordings(tmp_path):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    shutil.copy(EXAMPLES / "boutique-node-cpu.events.jsonl", recordings)
    (recordings / "README.txt").write_text("ignored: not a recording")
    topology = ["--topology", str(EXAMPLES / "boutique-topology.json")]
    by_dir = runner.invoke(app, ["analyze", str(recordings), *topology, "--json", "--out", str(tmp_path / "a")])
    by_file = runner.invoke(app, ["analyze", str(recordings / "boutique-node-cpu.events.jsonl"), *topology, "--json",
                                  "--out", str(tmp_path / "b")])
    assert by_dir.exit_code == 0 and by_file.exit_code == 0, by_dir.output + by_file.output
    dir_report, file_report = json.loads(by_dir.stdout), json.loads(by_file.stdout)
    assert dir_report["stats"]["events"] == file_report["stats"]["events"] > 0
    assert [i["root_causes"][0]["entity"] for i in dir_report["incidents"]] == \
        [i["root_causes"][0]["entity"] for i in file_report["incidents"]]


def test_a_directory_s_recordings_come_in_name_order_with_numbers_as_numbers(tmp_path):
    """`rtem analyze cases/ --each --keep` over 0…77: 2 before 10, so each sees the ones before it."""
    from agent.cli._events import recordings

    for name in ("10.events.jsonl", "2.events.jsonl", "1.events.jsonl", "b-2.events.jsonl", "a-10.events.jsonl",
                 "a-9.events.jsonl", "2.truth.json"):
        (tmp_path / name).write_text("")
    assert [p.name for p in recordings([tmp_path])] == [
        "1.events.jsonl", "2.events.jsonl", "10.events.jsonl", "a-9.events.jsonl", "a-10.events.jsonl",
        "b-2.events.jsonl"]


def test_ingest_of_a_directory_says_to_pass_the_files(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path), "--nats-url", "nats://127.0.0.1:1"])
    assert result.exit_code == 2 and "a directory" in result.output


def test_ingest_reports_each_invalid_line_with_its_number(nats_server, tmp_path):
    from tests.test_ingest import reset

    reset(nats_server.url)
    events = write_events(tmp_path / "mixed.jsonl", [
        cloud_event("ok-1", "a", "2024-01-01T00:00:00Z"),
        b"not json",
        "",  # blank: skipped, but it still counts for line numbers
        {"specversion": "1.0", "id": "no-time", "source": "/t", "type": "rtem.log", "subject": "a"},
        cloud_event("ok-2", "a", "2024-01-01T00:00:01Z"),
        b"[1, 2]",
        cloud_event("bad-time", "a", "yesterday"),
    ])
    result = runner.invoke(app, ["ingest", str(events), "--nats-url", nats_server.url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["published"] == 6 and report["lines"] == 6, "invalid lines are published too, for the DLQ"
    assert [(line["line"], line["event_id"]) for line in report["invalid"]] == [
        (2, None), (4, "no-time"), (6, None), (7, "bad-time")]
    reasons = {line["line"]: line["reason"] for line in report["invalid"]}
    assert reasons[2].startswith("not JSON") and "not a JSON object but a list" == reasons[6]
    assert "'data' is a required property" in reasons[4] and "'yesterday'" in reasons[7]

    human = runner.invoke(app, ["ingest", str(events), "--nats-url", nats_server.url])
    assert human.exit_code == 0, human.output
    assert "4 invalid" in human.stdout
    assert f"{events}:2: not JSON" in human.stderr and f"{events}:7: " in human.stderr
    assert "rtem dlq list" in human.stderr


# -- 3. help ---------------------------------------------------------------------------------------------


def help_text(*command: str, columns: int) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def source_help(*command: str) -> str:
    """The help as written in the source, hard-wrapped (typer gives it to click as it is)."""
    if not command:
        return app.info.help
    import typer.main

    cmd = typer.main.get_command(app)
    for name in command:
        cmd = cmd.commands[name]
    return cmd.callback.__wrapped__.__doc__ if hasattr(cmd.callback, "__wrapped__") else cmd.callback.__doc__


HELPED = [(), ("run",), ("demo",), ("rules", "replay"), ("analyze",), ("ingest",), ("incidents",)]


@pytest.mark.parametrize("command", HELPED, ids=lambda c: " ".join(c) or "rtem")
@pytest.mark.parametrize("columns", [80, 120])
def test_help_shows_no_type_for_flags_and_no_braces(command, columns):
    text = help_text(*command, columns=columns)
    assert "<bool>" not in text, "a flag takes no value"
    assert not re.search(r"\{\w+\}", text), "usage reads FILES..., not {files}..."
    assert "--help" in text


def test_every_command_gets_the_tidied_help():
    """The fix is global (agent/cli/_app.py): a command added later, in any module, gets it too."""
    import typer.main

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    paths = list(walk(typer.main.get_command(app), []))
    assert len(paths) > 30
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, f"rtem {' '.join(path)} --help: {result.output}"
        usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
        assert "<bool>" not in result.stdout and "{" not in usage, f"rtem {' '.join(path)} --help:\n{result.stdout}"


def test_usage_lines_name_arguments_the_click_way():
    assert "Usage: root analyze [OPTIONS] FILES..." in help_text("analyze", columns=120)  # CliRunner's prog name
    assert "Usage: root ingest [OPTIONS] FILES..." in help_text("ingest", columns=120)
    assert "<list[" not in help_text("analyze", columns=120)


@pytest.mark.parametrize("command", [c for c in HELPED if c and c != ("incidents",)], ids=lambda c: " ".join(c))
def test_help_sentences_are_not_broken_where_the_source_wraps(command):
    """Where the docstring wraps a line mid-paragraph, the two words must meet on one rendered line when the
    terminal is wide enough (before: typer kept the source's line break)."""
    doc = source_help(*command)
    rendered_lines = [" ".join(line.split()) for line in help_text(*command, columns=1500).splitlines()]
    lines = [line.strip() for line in doc.strip().splitlines()]
    joins = [(a.split()[-1], b.split()[0]) for a, b in zip(lines, lines[1:]) if a and b]
    assert joins, "the docstring is wrapped in the source: the test must have something to check"
    for last, first in joins:
        assert any(f"{last} {first}" in line for line in rendered_lines), \
            f"{' '.join(command)} --help breaks the line between {last!r} and {first!r}"


def test_rtem_help_lists_each_command_on_whole_lines():
    rendered = [" ".join(line.strip("│ ").split()) for line in help_text(columns=400).splitlines()]
    assert any(line.startswith("run Run the service") and "serve the HTTP API and web console" in line
               for line in rendered), "\n".join(rendered)


NUMBERS = {6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


def test_demo_help_counts_the_services_of_the_demo_shop():
    topology = yaml.safe_load((ROOT / "agent" / "demo" / "topology.yaml").read_text())
    services = [e for e in topology["entities"] if e["type"] == "service"]
    hosts = [e for e in topology["entities"] if e["type"] == "host"]
    text = " ".join(help_text("demo", columns=200).split())
    assert f"{NUMBERS[len(services)]} services" in text, f"the shop has {len(services)} services"
    assert f"{['no', 'one', 'two', 'three', 'four'][len(hosts)]} hosts" in text


# -- 4. the console's times are UTC ----------------------------------------------------------------------

NODE = shutil.which("node")


@pytest.mark.integration
@pytest.mark.skipif(NODE is None, reason="no node to run the console's formatting function")
def test_console_shows_every_time_in_utc_whatever_the_browser_zone():
    console = (ROOT / "agent" / "api" / "static" / "console.js").as_uri()
    script = (f"import {{ formatTime, formatClock }} from {json.dumps(console)};\n"
              "const inputs = ['2024-05-01T14:00:00+02:00', '2024-05-01T12:00:00.000Z', '2024-05-01T12:00:00',\n"
              "  '2024-05-01T23:30:00-01:00', 'not a time', null, new Date(Date.UTC(2024, 4, 1, 12, 0, 5))];\n"
              "console.log(JSON.stringify({times: inputs.map(formatTime), clock: formatClock(new Date(0))}));")
    # A far-from-UTC zone: local time would show 22:00 here for 12:00 UTC.
    result = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True,
                            env={**os.environ, "TZ": "Asia/Tokyo"}, timeout=30)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["times"] == ["2024-05-01 12:00:00 UTC", "2024-05-01 12:00:00 UTC", "2024-05-01 12:00:00 UTC",
                              "2024-05-02 00:30:00 UTC", "not a time", "–", "2024-05-01 12:00:05 UTC"]
    assert shown["clock"] == "00:00:00 UTC"
    incidents = (ROOT / "agent" / "api" / "static" / "incidents.js").read_text()
    assert "toLocale" not in incidents + (ROOT / "agent" / "api" / "static" / "incident.js").read_text()
