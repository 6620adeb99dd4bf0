"""Discovery against a real Prometheus (Debian's /usr/bin/prometheus) scraping two local metrics
endpoints whose targets carry different labels: the mapping turns target and series labels into
entities and relations, merged under the topology file (the file wins), and each change is audited."""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.config import Settings
from agent.discovery import Discovery, Mapping, topology_tasks
from agent.topology_reload import TopologyReloader
from tests.prometheus import PROMETHEUS, free_port, running_prometheus

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed (apt-get install prometheus)")]

MAPPING = {
    "targets": [{"match": {"job": "shop"},
                 "entities": [{"type": "instance", "id": "{service}@{node}"}, {"type": "host", "id": "{node}"},
                              {"type": "service", "id": "{service}", "labels": {"team": "{team}"}}],
                 "relations": [{"source": "{service}@{node}", "type": "instance_of", "target": "{service}"},
                               {"source": "{service}@{node}", "type": "runs_on", "target": "{node}"}]}],
    "series": [{"selector": "shop_dependency", "relations": [{"source": "{caller}", "type": "calls", "target": "{callee}"}]}],
}
FILE = {"entities": [{"id": "shop-api", "type": "service", "tier": 1, "labels": {"team": "payments"}},
                     {"id": "orders-db", "type": "database"}],
        "relations": [{"source": "shop-api", "target": "orders-db", "type": "uses"}]}


class Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@contextmanager
def metrics_server(text: str):
    handler = type("Handler", (Metrics,), {"body": text.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_discovery_builds_merges_and_audits_from_a_real_prometheus(tmp_path):
    mapping_file, topology_file = tmp_path / "mapping.yaml", tmp_path / "topology.yaml"
    mapping_file.write_text(yaml.safe_dump(MAPPING))
    topology_file.write_text(yaml.safe_dump(FILE))
    with metrics_server('shop_up 1\n') as api, \
            metrics_server('shop_up 1\nshop_dependency{caller="shop-web",callee="shop-api"} 1\n') as web, \
            running_prometheus([], tmp_path, job="shop", static_configs=[
                {"targets": [api], "labels": {"service": "shop-api", "node": "host-1", "team": "core"}},
                {"targets": [web], "labels": {"service": "shop-web", "node": "host-2"}}]) as prom:
        prom.wait_for_series("shop_dependency")
        found = Discovery(prom.url, Mapping.load(mapping_file)).discover()
        assert {(e.type, e.id) for e in found.entities} == {
            ("instance", "shop-api@host-1"), ("host", "host-1"), ("service", "shop-api"),
            ("instance", "shop-web@host-2"), ("host", "host-2"), ("service", "shop-web")}
        assert {(r.source, r.type, r.target) for r in found.relations} >= {
            ("shop-api@host-1", "instance_of", "shop-api"), ("shop-web@host-2", "runs_on", "host-2"),
            ("shop-web", "calls", "shop-api")}
        assert found.by_id["shop-web"].labels == {}  # no `team` label on that target: the label is left out

        audit = AuditLog(tmp_path / "rtem.db")
        try:
            source = TopologyReloader(topology_file, audit=audit)
            result = source.discovered(found, prom.url)
            assert result.status == "discovered"
            topology = source.current()
            assert topology.by_id["shop-api"].tier == 1 and topology.by_id["shop-api"].labels == {"team": "payments"}
            assert topology.service_of("shop-web@host-2") == "shop-web" and "shop-web" in topology.sources("shop-api", "calls")
            [record] = audit.records(kind="topology.discovered")
            assert record.inputs["source"] == prom.url
            assert record.decision["diff"]["entities_added"] == ["host-1", "host-2", "shop-api@host-1",
                                                                 "shop-web", "shop-web@host-2"]
            assert "shop-web calls shop-api" in record.decision["diff"]["relations_added"]
            # the same answer again changes nothing and writes nothing
            again = Discovery(prom.url, Mapping.load(mapping_file)).discover()
            assert source.discovered(again, prom.url).status == "unchanged"
            assert len(audit.records(kind="topology.discovered")) == 1
        finally:
            audit.close()

        # as `rtem run` starts it: the file watched, and discovery merged in at once
        cfg = Settings(data_dir=tmp_path / "data", topology=topology_file, prometheus_url=prom.url,
                       topology_mapping=mapping_file)
        assert asyncio.run(run_tasks(cfg, topology_file)) == {"shop-web", "shop-api@host-1"}

        shown = CliRunner().invoke(app, ["topology", "discover", "--prometheus", prom.url, "--mapping", str(mapping_file),
                                         "--topology", str(topology_file), "--json"])
        assert shown.exit_code == 0, shown.output
        report = json.loads(shown.stdout)
        assert "shop-web calls shop-api" in report["diff"]["relations_added"]
        assert "shop-api" not in report["diff"]["entities_added"]  # the file has it


async def run_tasks(cfg, topology_file):
    source, stop = TopologyReloader(topology_file), asyncio.Event()
    tasks = topology_tasks(cfg, source, stop)
    try:
        assert sorted(t.get_name() for t in tasks) == ["discovery", "topology"]
        for _ in range(100):
            if "shop-web" in source.current():
                break
            await asyncio.sleep(0.1)
        return {e for e in ("shop-web", "shop-api@host-1", "host-9") if e in source.current()}
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_discover_says_when_prometheus_cannot_be_asked(tmp_path):
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(yaml.safe_dump(MAPPING))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(app, ["topology", "discover", "--prometheus", url, "--mapping", str(mapping_file)])
    assert result.exit_code == 1 and f"asking Prometheus at {url} failed" in result.output
