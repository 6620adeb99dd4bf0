"""`rtem analyze` end to end: a real embedded nats-server, SQLite, the LangGraph graph and the guard."""

import json
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.reasoner import DeterministicReasoner
from bus import parse_event
from rules import Topology
from tests.helpers import (RECORDING, SHARED_DATA, TOPOLOGY, analyze, analyze_json, cloud_event, decisions,
                           write_events)

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_the_json_report_has_exactly_the_documented_shape(tmp_path):
    report = analyze_json(RECORDING, "--out", tmp_path / "out")
    assert set(report) == {"incidents", "stats"}
    assert set(report["stats"]) == {"events", "invalid", "duplicates"}
    [incident] = report["incidents"]
    assert set(incident) == {"id", "opened_at", "event_count", "entities", "root_causes", "actions"}
    assert incident["event_count"] == report["stats"]["events"] == 194
    for cause in incident["root_causes"]:
        assert set(cause) == {"entity", "fault_type", "confidence", "evidence", "explanation"}
        assert 0 <= cause["confidence"] <= 1 and cause["explanation"]
    for action in incident["actions"]:
        assert set(action) == {"type", "target", "params", "verdict", "rules", "reason", "executed"}
        assert action["verdict"] in {"allow", "deny", "require_approval"} and action["executed"] is False


def test_the_recorded_host_fault_is_found(tmp_path):
    [incident] = analyze_json(RECORDING, "--out", tmp_path / "out")["incidents"]
    top3 = [c["entity"] for c in incident["root_causes"][:3]]
    assert "node-6" in top3, top3  # the truth of this recording: CPU load injected on node-6
    evidence = set(incident["root_causes"][0]["evidence"])
    recorded_ids = {json.loads(line)["id"] for line in RECORDING.read_text().splitlines()}
    assert evidence and evidence <= recorded_ids, "evidence names real event ids"


def test_a_replay_gives_the_same_incidents_every_time(tmp_path):
    first = analyze_json(RECORDING, "--out", tmp_path / "a")
    second = analyze_json(RECORDING, "--out", tmp_path / "b")
    assert first == second


def test_bad_and_duplicate_lines_are_counted_and_the_rest_analyzed(tmp_path):
    lines = RECORDING.read_bytes().splitlines()
    mixed = write_events(tmp_path / "mixed.jsonl", [
        *lines[:50], b"{not json", lines[3], b'{"specversion": "1.0", "id": "x"}', *lines[50:], lines[60]])
    report = analyze_json(mixed, "--out", tmp_path / "out")
    assert report["stats"] == {"events": 194, "invalid": 2, "duplicates": 2}
    assert sum(i["event_count"] for i in report["incidents"]) == 194


def test_each_file_is_analyzed_on_its_own(tmp_path):
    files = [SHARED_DATA / "cases" / f"{n}.events.jsonl" for n in (0, 2)]
    files = [f for f in files if f.exists()] or [RECORDING]
    files.append(RECORDING)
    result = runner.invoke(app, ["analyze", *map(str, files), "--topology", str(TOPOLOGY), "--each", "--json",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["file"] for d in docs] == [str(f) for f in files]
    for doc in docs:
        assert doc["stats"]["duplicates"] == 0, "fresh state per file: nothing seen before"
        assert doc["incidents"]


def test_every_decision_is_in_a_verifiable_audit_log(tmp_path):
    analyze(RECORDING, "--out", tmp_path / "out")
    db = tmp_path / "out" / "run" / "rtem.db"
    listing = runner.invoke(app, ["audit", "list", "--db", str(db), "--json"])
    kinds = [r["kind"] for r in json.loads(listing.stdout)]
    assert kinds[0] == "incident.opened"
    assert {"causes.ranked", "actions.proposed", "action.verdict", "incident.diagnosed"} <= set(kinds)
    verdicts = [r for r in json.loads(listing.stdout) if r["kind"] == "action.verdict"]
    assert all(r["versions"]["ruleset"] and r["versions"]["reasoner"] for r in verdicts)
    assert runner.invoke(app, ["audit", "verify", "--db", str(db)]).exit_code == 0

    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit'"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("UPDATE audit SET reasons='[\"nothing to see\"]' WHERE seq=2")
    tampered = runner.invoke(app, ["audit", "verify", "--db", str(db), "--json"])
    assert tampered.exit_code == 1
    problems = json.loads(tampered.stdout)["problems"]
    assert problems[0]["seq"] == 2 and problems[0]["kind"] == "changed"


def test_incidents_can_be_listed_and_shown_after_an_analysis(tmp_path):
    report = analyze_json(RECORDING, "--out", tmp_path / "out")
    db = str(tmp_path / "out" / "run" / "rtem.db")
    listed = json.loads(runner.invoke(app, ["incidents", "--db", db, "--json"]).stdout)
    assert [i["id"] for i in listed["incidents"]] == [i["id"] for i in report["incidents"]]
    incident_id = report["incidents"][0]["id"]
    shown = runner.invoke(app, ["incidents", "show", incident_id[:8], "--db", db, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == incident_id
    missing = runner.invoke(app, ["incidents", "show", "inc-nope", "--db", db])
    assert missing.exit_code == 1 and "no incident" in missing.output


def test_errors_name_the_problem(tmp_path):
    no_file = runner.invoke(app, ["analyze", str(tmp_path / "nope.jsonl"), "--topology", str(TOPOLOGY)])
    assert no_file.exit_code == 2 and "no such file" in no_file.output
    bad_topology = tmp_path / "topo.json"
    bad_topology.write_text(json.dumps({"entities": [{"id": "a", "type": "service"}],
                                        "relations": [{"source": "a", "target": "b", "type": "calls"}]}))
    result = runner.invoke(app, ["analyze", str(RECORDING), "--topology", str(bad_topology)])
    assert result.exit_code == 2 and "relations[0] names unknown entity 'b'" in result.output


def test_the_console_script_runs_as_installed(tmp_path):
    events = write_events(tmp_path / "e.jsonl", [
        cloud_event(f"e{i}", "cartservice-0", f"2022-03-20T00:36:{i:02d}Z", metric="container_cpu_usage_seconds",
                    direction="up") for i in range(20)])
    done = subprocess.run([sys.executable, "-m", "agent", "analyze", str(events), "--topology", str(TOPOLOGY),
                           "--json", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [incident] = json.loads(done.stdout)["incidents"]
    assert incident["root_causes"][0]["entity"] == "cartservice-0"


def test_entities_the_topology_does_not_hold_are_named_not_silently_ignored(tmp_path):
    """A stale topology must not hide a cause without a word: the entities of an incident it does not hold
    are named on the terminal and in the diagnosis record, and a full topology says nothing of the kind."""
    doc = json.loads(TOPOLOGY.read_text())
    subjects = {json.loads(line).get("subject") for line in RECORDING.read_text().splitlines()}
    gone = sorted(e["id"] for e in doc["entities"] if e["type"] == "instance" and e["id"] in subjects)[:2]
    thin = tmp_path / "thin.json"
    thin.write_text(json.dumps({"entities": [e for e in doc["entities"] if e["id"] not in gone],
                                "relations": [r for r in doc["relations"] if r["source"] not in gone
                                              and r["target"] not in gone]}))
    said = runner.invoke(app, ["analyze", str(RECORDING), "--topology", str(thin), "--out", str(tmp_path / "thin")])
    assert said.exit_code == 0, said.output
    note = (f"2 entities of this incident are not in the topology, so their events were not weighed and none "
            f"can be ranked as the cause: {gone[0]}, {gone[1]}; add them to the topology")
    assert note in " ".join(said.output.split())
    [ranked] = decisions(tmp_path / "thin" / "run" / "rtem.db", "causes.ranked")
    assert ranked["reasons"][0].startswith(note) and ranked["inputs"]["unlisted"] == gone
    assert not any(c["entity"] in gone for c in ranked["decision"]["root_causes"])
    db = str(tmp_path / "thin" / "run" / "rtem.db")
    shown = runner.invoke(app, ["incidents", "show", ranked["incident_id"], "--db", db])
    assert shown.exit_code == 0 and note in " ".join(shown.output.split())
    as_json = json.loads(runner.invoke(app, ["incidents", "show", ranked["incident_id"], "--db", db, "--json"]).stdout)
    assert as_json["unlisted"] == gone
    report = runner.invoke(app, ["report", ranked["incident_id"], "--db", db])
    assert report.exit_code == 0 and f"- **Not weighed:** {note}" in report.stdout
    html = runner.invoke(app, ["report", ranked["incident_id"], "--db", db, "--format", "html"]).stdout
    assert f"<tr><th>Not weighed</th><td>{note}" in html
    top = ranked["decision"]["root_causes"][0]["entity"]
    why = runner.invoke(app, ["ask", f"why did you rank {top} first?", "--db", db, "--json"])
    answer = json.loads(why.stdout)
    assert answer["intent"] == "cause" and f"Why {top}: " in answer["text"], answer
    assert f"Not weighed: {note}" in json.loads(runner.invoke(
        app, ["ask", f"what is wrong with {gone[0]}?", "--db", db, "--json"]).stdout)["text"]
    full = analyze(RECORDING, "--out", tmp_path / "full")
    assert "not in the topology" not in full.output
    assert all("not in the topology" not in r for r in decisions(tmp_path / "full" / "run" / "rtem.db",
                                                                 "causes.ranked")[0]["reasons"])


def test_entities_the_topology_lacks_are_weighed_when_their_events_say_their_service(tmp_path):
    """Pods a rollout added since the topology was written, whose events carry OpenTelemetry's
    `service.name`: weighed as instances of that service (the record and each one's explanation say so),
    not named as unweighed; the ranking's leader is the full topology's."""
    doc = json.loads(TOPOLOGY.read_text())
    subjects = {json.loads(line).get("subject") for line in RECORDING.read_text().splitlines()}
    gone = sorted(e["id"] for e in doc["entities"] if e["type"] == "instance" and e["id"] in subjects)[:2]
    owner = {r["source"]: r["target"] for r in doc["relations"] if r["type"] == "instance_of"}
    thin = tmp_path / "thin.json"
    thin.write_text(json.dumps({"entities": [e for e in doc["entities"] if e["id"] not in gone],
                                "relations": [r for r in doc["relations"] if r["source"] not in gone
                                              and r["target"] not in gone]}))
    lines = [json.loads(line) for line in RECORDING.read_text().splitlines()]
    for event in lines:
        if event["subject"] in gone and event["type"] != "rtem.trace.anomaly":
            event["data"]["attributes"]["service.name"] = owner[event["subject"]]
    recording = write_events(tmp_path / "said.jsonl", lines)
    said = runner.invoke(app, ["analyze", str(recording), "--topology", str(thin), "--out", str(tmp_path / "said")])
    assert said.exit_code == 0, said.output
    assert "not weighed" not in said.output
    note = (f"2 entities of this incident are not in the topology but weighed as an instance of the service its "
            f"events name (in brackets): {gone[0]} ({owner[gone[0]]}), {gone[1]} ({owner[gone[1]]})")
    assert f"note: {note}" in " ".join(said.output.split())
    [ranked] = decisions(tmp_path / "said" / "run" / "rtem.db", "causes.ranked")
    assert ranked["inputs"]["described"] == {g: owner[g] for g in gone} and "unlisted" not in ranked["inputs"]
    assert ranked["reasons"][0].startswith(note)
    db = str(tmp_path / "said" / "run" / "rtem.db")
    shown = runner.invoke(app, ["incidents", "show", ranked["incident_id"], "--db", db])
    assert shown.exit_code == 0 and note in " ".join(shown.output.split())
    as_json = json.loads(runner.invoke(app, ["incidents", "show", ranked["incident_id"], "--db", db, "--json"]).stdout)
    assert as_json["described"] == {g: owner[g] for g in gone} and as_json["unlisted"] == []
    report = runner.invoke(app, ["report", ranked["incident_id"], "--db", db])
    assert f"- **Described by their events:** {note}" in report.stdout and "Not weighed" not in report.stdout
    answer = json.loads(runner.invoke(app, ["ask", f"what is wrong with {gone[0]}?", "--db", db, "--json"]).stdout)
    assert answer["intent"] == "cause" and f"Described by their events: {note}" in answer["text"], answer
    [full] = decisions(analyze(RECORDING, "--out", tmp_path / "full") and tmp_path / "full" / "run" / "rtem.db",
                       "causes.ranked")
    leader = full["decision"]["root_causes"][0]["entity"]
    assert ranked["decision"]["root_causes"][0]["entity"] == leader
    weighed = DeterministicReasoner().rank([parse_event(json.dumps(e)) for e in lines], Topology.load(thin), 50)
    pods = [c for c in weighed if c.entity in gone]
    assert pods and all(f"its events name {owner[c.entity]} as its service" in c.explanation
                        for c in pods)


def test_an_incident_only_about_entities_the_topology_lacks_says_why_nothing_was_ranked(tmp_path):
    recording = write_events(tmp_path / "ghost.jsonl", [cloud_event(f"g{n}", "ghost-0", f"2024-05-01T12:00:0{n}Z",
                                                                    severity="error", metric="cpu") for n in range(3)])
    said = analyze(recording, "--out", tmp_path / "out")
    assert "1 entity of this incident is not in the topology" in " ".join(said.output.split())
    db = str(tmp_path / "out" / "run" / "rtem.db")
    answer = json.loads(runner.invoke(app, ["ask", "what caused it?", "--db", db, "--json"]).stdout)
    assert "rtem could rank no root cause: 1 entity of this incident is not in the topology" in answer["text"], answer
    assert "ghost-0" in answer["text"] and answer["citations"]["seqs"]


def test_a_why_that_names_only_an_entity_explains_its_place_in_the_ranking(tmp_path):
    """"why node-6?" names no action: it asks why the diagnosis put that entity where it did (once it
    answered "the question names no action I know")."""
    [incident] = analyze_json(RECORDING, "--out", tmp_path / "out")["incidents"]
    db = str(tmp_path / "out" / "run" / "rtem.db")
    topology = Topology.load(TOPOLOGY)

    def ask(question: str) -> dict:
        done = runner.invoke(app, ["ask", question, "--db", db, "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    causes = incident["root_causes"]
    asked = [(place, c) for place, c in enumerate(causes) if topology.entity_type(c["entity"]) != "service"][:3]
    assert len(asked) >= 2 and any(place for place, _ in asked)
    for place, cause in asked:
        reply = ask(f"why {cause['entity']}?")
        ranked_as = f" (ranked #{place + 1})" if place else ""
        assert f"Why {cause['entity']}{ranked_as}: {cause['explanation']}" in reply["text"], reply["text"]
        assert reply["intent"] == "why" and reply["citations"]["seqs"]
    bystander = next(e for e in incident["entities"] if e not in {c["entity"] for c in causes}
                     and topology.entity_type(e) == "instance")
    assert f"{bystander} is not among the {len(causes)} causes it ranked" in ask(f"why {bystander}?")["text"]
    # naming neither an action nor an entity: "I don't know", saying what it lacks
    assert "names no action" in ask("why?")["text"]
