"""Investigation through Prometheus (agent/investigate): the query file, safe templating, evidence the
reasoner weighs, and — against a real Prometheus scraping the demo shop's exporter — a query's result
changing a diagnosis made by the real graph; with Prometheus down the incident is still diagnosed."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.config import Settings
from agent.demo._prometheus import ShopExporter
from agent.demo.scenarios import SCENARIOS
from agent.demo.sim import TOPOLOGY_PATH, Simulation
from agent.investigate import (Bounds, PrometheusClient, RangeResult, Series, evidence, load_queries,
                               promql_escape, render)
from agent.reasoner._signals import extract_signals
from agent.service import build
from bus import Event
from rules import RulesError, Topology
from tests.llm_server import ScriptedLLM, ToolCall, good_diagnosis, good_proposals, task_of
from tests.prometheus import free_port, requires_prometheus, running_prometheus

TOPOLOGY = Topology.load(TOPOLOGY_PATH)


# -- the query file (fast) ----------------------------------------------------------------------------


def test_the_packaged_query_file_covers_the_shops_entity_types():
    queries = load_queries()
    assert {t.entity_type for t in queries.templates.values()} >= {"instance", "host", "database", "queue"}
    assert queries.get("database.saturation").spec.direction == "up"
    assert len(queries.digest) == 16


BAD = [
    ("version: 1\nqueries:\n  instance:\n    hunger:\n      query: 'up'\n      metric: up\n      above: 1\n",
     4, "hunger"),
    ("version: 1\nqueries:\n  instance:\n    errors:\n      query: 'up{entity={{id}}}'\n      metric: error_rate\n"
     "      above: 1\n", 5, "outside a double-quoted string"),
    ("version: 1\nqueries:\n  instance:\n    errors:\n      query: 'up{entity=\"{{secret}}\"}'\n"
     "      metric: error_rate\n      above: 1\n", 5, "unknown placeholder"),
    ("version: 1\nqueries:\n  instance:\n    errors:\n      query: 'up'\n      metric: error_rate\n      above: 1\n"
     "      below: 0\n", 4, "exactly one of `above` or `below`"),
    ("version: 1\nqueries:\n  instance:\n    errors:\n      query: 'up'\n      metric: error_rate\n      above: 1\n"
     "      colour: red\n", 8, "colour"),
    ("version: 1\nqueries:\n  instance:\n    errors: {query: 'up', metric: [x], above: 1}\n", 4, "metric"),
    ("version: 1\nqueries:\n  instance: [\n", 4, "YAML syntax"),
    ("version: 2\nqueries: {}\n", 1, "version"),
]


@pytest.mark.parametrize("text, line, says", BAD)
def test_a_bad_query_file_is_refused_at_its_line(tmp_path, text, line, says):
    path = tmp_path / "queries.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as refused:
        load_queries(path)
    assert refused.value.file == str(path)
    assert refused.value.line == line, str(refused.value)
    assert says in str(refused.value)


def test_label_values_are_escaped_as_promql_strings(tmp_path):
    path = tmp_path / "queries.yaml"
    path.write_text("version: 1\nqueries:\n  service:\n    errors:\n"
                    "      query: 'sum(rate(http_errors_total{service=\"{{id}}\", zone=\"{{labels.zone}}\"}[1m]))'\n"
                    "      metric: error_rate\n      above: 1\n")
    template = load_queries(path).get("service.errors")
    hostile = 'a"} or vector(1) or {x="'
    topology = Topology.from_dict({"entities": [
        {"id": hostile, "type": "service", "labels": {"zone": 'back\\slash\nnewline'}}]})
    query = render(template, hostile, topology)
    assert query == ('sum(rate(http_errors_total{service="a\\"} or vector(1) or {x=\\"", '
                     'zone="back\\\\slash\\nnewline"}[1m]))')
    # PromQL's double-quoted strings read like JSON's: the literal decodes back to exactly the value
    literal = query.split('service=', 1)[1].split(', zone=')[0]
    assert json.loads(literal) == hostile
    assert promql_escape("\x01") == "\\x01"


def test_a_template_needing_a_label_the_entity_lacks_is_not_run(tmp_path):
    path = tmp_path / "queries.yaml"
    path.write_text("version: 1\nqueries:\n  host:\n    errors:\n      query: 'x{zone=\"{{labels.zone}}\"}'\n"
                    "      metric: error_rate\n      above: 1\n")
    template = load_queries(path).get("host.errors")
    topology = Topology.from_dict({"entities": [{"id": "h", "type": "host"}]})
    with pytest.raises(ValueError, match="labels.zone"):
        render(template, "h", topology)


def test_the_step_keeps_a_series_under_its_point_bound():
    client = PrometheusClient("http://127.0.0.1:1", Bounds(max_points=120, min_step_s=1))
    assert client.step_for(0, 60) == 1
    assert client.step_for(0, 3600) == 31  # ceil(3600 / 119)
    assert 3600 / client.step_for(0, 3600) + 1 <= 120
    client.close()


def test_an_anomalous_series_becomes_evidence_the_reasoner_weighs():
    template = load_queries().get("database.saturation")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    result = RangeResult("q", t0, t0 + 30, 1, (
        Series({"entity": "orders-db"}, ((t0, 0.3), (t0 + 10, 0.95), (t0 + 20, 1.0))),
        Series({"entity": "other"}, ((t0, 0.1),)),  # never beyond the threshold: no evidence
    ), truncated=False)
    events = evidence("inc-1", template, "orders-db", result, "http://prom:9090")
    assert len(events) == 1
    event = events[0]
    assert (event.type, event.subject, event.ts) == ("rtem.metric.anomaly", "orders-db", t0 + 10)
    assert event.attributes["value"] == 1.0 and event.attributes["threshold"] == 0.9
    assert event.source.startswith("http://prom:9090/graph?g0.expr=")
    assert evidence("inc-1", template, "orders-db", result, "http://prom:9090")[0].id == event.id  # idempotent
    signals = extract_signals(events, TOPOLOGY)
    assert [(s.entity, s.source, s.direction) for s in signals] == [("orders-db", "metric", "up")]


# -- through the graph ----------------------------------------------------------------------------------


def symptoms(start: float, end: float) -> list[Event]:
    """What reached rtem between `start` and `end` (unix seconds): orders is slow and cannot get
    connections, and the gateway in front of it is slow; nothing about orders' database."""
    said = [("orders-0", "rtem.metric.anomaly", "warning", "latency_ms up"),
            ("orders-0", "rtem.log", "error", "could not acquire a connection: timeout"),
            ("orders-1", "rtem.metric.anomaly", "warning", "latency_ms up"),
            ("orders-1", "rtem.log", "error", "could not acquire a connection: timeout"),
            ("gateway-0", "rtem.metric.anomaly", "warning", "latency_ms up")]
    step = (end - start) / len(said)
    return [Event(id=f"sym-{n}", source="/test", type=type_, subject=subject, severity=severity, message=message,
                  time=datetime.fromtimestamp(start + n * step, timezone.utc),
                  attributes={"metric": "latency_ms", "direction": "up"} if type_ == "rtem.metric.anomaly" else {})
            for n, (subject, type_, severity, message) in enumerate(said)]


async def diagnose(data_dir: Path, events: list[Event], **settings) -> tuple[dict, list]:
    """The incident these events open, run through the real graph (dry run: up to the guard)."""
    parts = build(Settings(data_dir=data_dir, **settings), TOPOLOGY, data_dir)
    await parts.open()
    try:
        result = parts.triage.handle(events)
        (incident_id,) = result.opened
        state, _ = await parts.graph.run(incident_id)
        gathered = parts.audit.records(incident_id=incident_id, kind="context.gathered")
        return state, [r.model_dump(mode="json") for r in gathered], parts.store.events(incident_id)
    finally:
        await parts.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A real Prometheus scraping the demo shop's exporter while orders-db is out of connections; the
    time (unix seconds) of its first scrape of that."""
    sim = Simulation(seed=3)
    sim.inject(SCENARIOS["db-connection-exhaustion"].at(0))
    exporter = ShopExporter(sim.topology)
    assert exporter.observe(sim.advance(10)) > 0  # three ticks, the fault already on
    port = exporter.serve(0)
    try:
        with running_prometheus([f"127.0.0.1:{port}"], tmp_path_factory.mktemp("prometheus")) as prom:
            found = prom.wait_for_series('rtem_shop_connections_in_use{entity="orders-db"} >= 100')
            first = float(found[0]["value"][0])
            time.sleep(max(0.0, first + 3 - time.time()))  # a few scrapes inside the incidents' windows
            yield prom, first
    finally:
        asyncio.run(exporter.stop())


@requires_prometheus
@pytest.mark.integration
def test_what_prometheus_shows_changes_the_diagnosis(shop, tmp_path):
    prom, first = shop
    events = symptoms(first + 0.5, time.time())

    state, gathered, _ = asyncio.run(diagnose(tmp_path / "without", events))
    assert state["root_causes"][0]["entity"] != "orders-db"
    assert gathered == [], "without RTEM_PROMETHEUS_URL nothing is queried"

    state, gathered, stored = asyncio.run(diagnose(tmp_path / "with", events, prometheus_url=prom.url))
    assert state["root_causes"][0]["entity"] == "orders-db", (state["root_causes"], gathered)
    (record,) = gathered
    decision = record["decision"]
    assert not decision["failures"], decision["failures"]
    ran = {(q["entity"], q["template"]) for q in decision["queries"]}
    assert ("orders-db", "database.saturation") in ran and ("orders-0", "instance.latency") in ran
    assert any(a.startswith("orders-db database.saturation") for a in decision["anomalous"])
    assert not any(a.startswith("orders-0") for a in decision["anomalous"]), "healthy instances are not anomalous"
    proofs = [e for e in stored if e.attributes.get("evidence") == "prometheus"]
    assert proofs and {e.subject for e in proofs} == {"orders-db"}
    assert set(record["evidence"]) == {e.id for e in proofs}
    saturation = next(e for e in proofs if e.attributes["template"] == "database.saturation")
    assert saturation.attributes["value"] == 1.0 and saturation.attributes["threshold"] == 0.9
    assert 'entity="orders-db"' in saturation.attributes["query"]
    window = record["inputs"]["window"]
    assert window["start"] <= saturation.time.isoformat() <= window["end"]


@requires_prometheus
@pytest.mark.integration
@pytest.mark.parametrize("output", ["tools", "json_schema"])
def test_the_llm_queries_prometheus_through_allowlisted_tools(shop, tmp_path, output):
    prom, first = shop
    llm = ScriptedLLM().start()
    llm.on("diagnosis",
           ToolCall("query_prometheus", {"template": "database.saturation", "entity": "orders-db"}),
           ToolCall("query_prometheus", {"template": "database.saturation", "entity": "orders-0"}),
           good_diagnosis)  # two calls is the limit: the third request offers no tool
    llm.on("proposals", good_proposals)
    try:
        state, _, _ = asyncio.run(diagnose(
            tmp_path / "llm", symptoms(first + 0.5, time.time()), prometheus_url=prom.url, prometheus_llm_calls=2,
            llm="openai", llm_base_url=llm.url, llm_output=output, llm_retry_attempts=1))
        requests = [r for r in llm.requests if task_of(r) == "diagnosis"]
    finally:
        llm.stop()
    assert state["diagnosis"]["reasoner"] == "llm", state["diagnosis"]
    assert len(requests) == 3
    offered = [[t["function"]["name"] for t in r.get("tools", [])] for r in requests]
    assert ["query_prometheus" in names for names in offered] == [True, True, False]
    answered = [json.loads(m["content"]) for m in requests[1]["messages"] if m["role"] == "tool"]
    assert answered[0]["entity"] == "orders-db" and answered[0]["anomalous"] is True and answered[0]["peak"] == 1.0
    assert len(answered[0]["series"][0]["points"]) <= 12
    refused = [json.loads(m["content"]) for m in requests[2]["messages"] if m["role"] == "tool"]
    assert "applies to database entities" in refused[-1]["error"]
    log = AuditLog(tmp_path / "llm" / "rtem.db")
    try:
        calls = [r.model_dump(mode="json") for r in log.records(kind="llm.tool_called")]
    finally:
        log.close()
    assert [(c["inputs"]["template"], c["inputs"]["entity"]) for c in calls] == [
        ("database.saturation", "orders-db"), ("database.saturation", "orders-0")]
    assert 'entity="orders-db"' in calls[0]["inputs"]["query"] and calls[0]["decision"]["anomalous"] is True
    assert "applies to database entities" in calls[1]["decision"]["error"]


def test_with_prometheus_down_the_incident_is_still_diagnosed(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    state, gathered, stored = asyncio.run(diagnose(tmp_path / "down", symptoms(time.time() - 20, time.time()), prometheus_url=down,
                                                   prometheus_timeout_s=1))
    assert state["root_causes"], "diagnosed from the events that reached rtem"
    (record,) = gathered
    failures = record["decision"]["failures"]
    assert failures and down in failures[0] and "is Prometheus running" in failures[0]
    assert any("circuit breaker" in f for f in failures), "after three failures the rest are not even tried"
    assert not [e for e in stored if e.attributes.get("evidence") == "prometheus"]
    log = AuditLog(tmp_path / "down" / "rtem.db")
    try:
        assert log.records(kind="causes.ranked")
    finally:
        log.close()


async def test_the_exporter_follows_the_shop_on_nats(nats_server, bus):
    """What `rtem demo --prometheus-port` serves: the shop's samples as they are published."""
    sim = Simulation(speed=100, seed=1)
    sim.inject(SCENARIOS["db-connection-exhaustion"].at(0))
    exporter = ShopExporter(sim.topology)
    await exporter.follow(nats_server.url)
    port = exporter.serve(0)
    await sim.start(nats_server.url)
    try:
        body = ""
        for _ in range(100):
            body = await asyncio.to_thread(_scrape, port)
            if 'rtem_shop_connections_in_use{entity="orders-db"' in body:
                break
            await asyncio.sleep(0.05)
    finally:
        await sim.stop()
        await exporter.stop()
    line = next(x for x in body.splitlines() if x.startswith('rtem_shop_connections_in_use{entity="orders-db"'))
    assert 'type="database"' in line and float(line.rsplit(" ", 1)[1]) == 100.0
    assert 'rtem_shop_health_failures_total{entity="orders-db"' in body
    assert any(x.startswith('rtem_shop_cpu_pct{entity="orders-0"') for x in body.splitlines())


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()
