"""History across analyses (issue 14, item 2): `rtem analyze --keep` adds to one store, so a later analysis
sees earlier ones as history (the `earlier_incidents` its diagnosis counted), `--each --keep` goes through
the files in the order given, each its own incident, and incident ids never collide. Real embedded NATS,
SQLite and the graph, through the CLI in process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.confirm import confirmed_of
from tests.helpers import TOPOLOGY, cloud_event, write_events

pytestmark = pytest.mark.integration

runner = CliRunner()
FAULTS = {"a": ("cartservice-0", 0), "b": ("paymentservice-1", 2), "c": ("currencyservice-2", 4)}  # hour of day


@pytest.fixture
def recordings(tmp_path):
    """Three recordings, hours apart, each a CPU fault on its own instance."""
    return {name: write_events(tmp_path / f"{name}.jsonl", [
        cloud_event(f"{name}{i}", subject, f"2022-03-20T{hour:02d}:10:{i:02d}Z", metric="container_cpu_usage_seconds",
                    direction="up") for i in range(12)]) for name, (subject, hour) in FAULTS.items()}


def analyze(out, *args) -> list[dict]:
    result = runner.invoke(app, ["analyze", *map(str, args), "--topology", str(TOPOLOGY), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.stdout.strip()
    return [json.loads(line) for line in text.splitlines()] if "--each" in args else [json.loads(text)]


def earlier_incidents(db) -> dict[str, int]:
    """How many earlier incidents each incident's diagnosis counted as history."""
    with AuditLog(db) as audit:
        return {r.incident_id: r.inputs["earlier_incidents"] for r in audit.records(kind="causes.ranked")}


def test_analyses_with_keep_share_one_store_and_the_later_sees_the_earlier(tmp_path, recordings):
    out, db = tmp_path / "out", tmp_path / "out" / "run" / "rtem.db"
    [first] = analyze(out, recordings["a"], "--keep")
    [a] = first["incidents"]
    confirmed = runner.invoke(app, ["incidents", "confirm", a["id"], "--cause", "cartservice-0", "--db", str(db)])
    assert confirmed.exit_code == 0, confirmed.output
    [second] = analyze(out, recordings["b"], "--keep")
    [b] = second["incidents"]  # only this analysis's incident is reported
    assert b["id"] != a["id"] and b["root_causes"][0]["entity"] == "paymentservice-1"
    assert earlier_incidents(db) == {a["id"]: 0, b["id"]: 1}
    listed = json.loads(runner.invoke(app, ["incidents", "--db", str(db), "--json"]).stdout)["incidents"]
    assert [i["id"] for i in listed] == [a["id"], b["id"]]
    with AuditLog(db) as audit:
        assert confirmed_of(audit, a["id"]).entity == "cartservice-0"  # the confirmation survived the analysis
    again = analyze(out, recordings["a"], "--keep")[0]  # the same events again: duplicates, no new incident
    assert again["incidents"] == [] and again["stats"]["duplicates"] == 12
    analyze(out, recordings["c"])  # without --keep: a fresh store
    assert len(json.loads(runner.invoke(app, ["incidents", "--db", str(db), "--json"]).stdout)["incidents"]) == 1


def test_each_with_keep_goes_in_the_order_given_each_its_own_incident(tmp_path, recordings):
    out, db = tmp_path / "out", tmp_path / "out" / "run" / "rtem.db"
    order = [recordings["a"], recordings["b"], recordings["c"]]
    docs = analyze(out, *order, "--each", "--keep")
    assert [d["file"] for d in docs] == [str(f) for f in order]
    ids = [inc["id"] for d in docs for inc in d["incidents"]]
    assert len(ids) == 3 == len(set(ids)), "one incident per file, ids unique"
    assert [d["incidents"][0]["root_causes"][0]["entity"] for d in docs] == [s for s, _ in FAULTS.values()]
    assert earlier_incidents(db) == dict(zip(ids, (0, 1, 2)))  # each sees only the files before it
