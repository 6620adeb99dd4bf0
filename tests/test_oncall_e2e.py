"""Issue 13's whole path in one test, with real processes: the demo's shop publishes telemetry on NATS and
exposes it to a real Prometheus; rtem run opens an incident, investigates through Prometheus, pages
through a real Alertmanager (a webhook receiver counts what it is sent) and by the escalation policy (a
signed webhook); an acknowledgement stops the re-paging; a person approves the failover, the shop
recovers, the incident resolves, and so does the alert."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from agent import signing
from agent.demo._prometheus import ShopExporter
from agent.demo.scenarios import SCENARIOS
from agent.demo.sim import TOPOLOGY_PATH, Simulation
from agent.run import Service
from agent.tokens import TokenStore
from rules import Topology
from tests.alertmanager import Alertmanager, Receiver
from tests.alertmanager import binary as alertmanager_binary
from tests.live import settings, wait_for
from tests.prometheus import PROMETHEUS, running_prometheus

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (apt-get install prometheus)")]

POLICY = """\
version: 1
routes:
  - id: default
    repeat_every: 1s
    levels: [{receivers: [webhook, "rotation:platform"]}]
"""


def ours(posts: list, incident_id: str, status: str) -> list:
    """Alertmanager's notifications about `incident_id` in `status` (firing or resolved)."""
    return [p for p in posts if p and p.get("status") == status
            and any(a["labels"].get("incident") == incident_id for a in p.get("alerts", []))]


def escalator_pages(service: Service, incident_id: str) -> list:
    return [r for r in service.parts.audit.records(incident_id=incident_id, kind="incident.paged")
            if r.node == "escalation"]


async def test_shop_to_prometheus_to_incident_to_alertmanager_to_acknowledgement_to_resolution(tmp_path, nats_server):
    alertmanager_binary()  # skips, saying why, when Debian's prometheus-alertmanager is not installed
    topology = Topology.load(TOPOLOGY_PATH)
    exporter = ShopExporter(topology)
    await exporter.follow(nats_server.url)
    port = exporter.serve(0)
    policy = tmp_path / "escalation.yaml"
    policy.write_text(POLICY)
    with Receiver() as hook, Receiver() as pages, \
            Alertmanager(tmp_path / "alertmanager", f"{hook.url}/alertmanager") as am, \
            running_prometheus([f"127.0.0.1:{port}"], tmp_path) as prom:
        service = await Service(settings(
            tmp_path, nats_server, topology=TOPOLOGY_PATH, diagnose_after_s=5, verify_quiet_s=3,
            http_port=0, prometheus_url=prom.url, alertmanager_url=am.url, alertmanager_refresh_s=1,
            webhook_url=pages.url, webhook_secret="s3cret", escalation_policy=policy, escalation_every_s=0.25,
            notify_retry_initial_s=0.05), topology, http=True, poll_s=0.05).start()
        tokens = TokenStore(tmp_path / "data" / "rtem.db")
        operator, approver = tokens.create("oncall-1", "operator")[0], tokens.create("lead-1", "approver")[0]
        # Made now, so that its event time, which runs at wall speed from here, is Prometheus's time too.
        sim = Simulation(speed=1, tick_s=1, recovery_s=2, seed=3)
        try:
            await sim.start(nats_server.url)
            await asyncio.to_thread(prom.wait_for_series, 'rtem_shop_up{entity="orders-db"}')  # scraped, healthy
            sim.inject(SCENARIOS["db-connection-exhaustion"].at(0))
            row = await wait_for(lambda: next((r for r in service.parts.store.incidents()
                                               if r["status"] == "awaiting_approval"), None), 60)
            incident_id = row["id"]
            (ranked,) = service.parts.audit.records(incident_id=incident_id, kind="causes.ranked")
            assert ranked.decision["root_causes"][0]["entity"] == "orders-db"

            # The shop's metrics, scraped by Prometheus, were evidence of the diagnosis.
            (gathered,) = service.parts.audit.records(incident_id=incident_id, kind="context.gathered")
            assert not gathered.decision["failures"], gathered.decision["failures"]
            assert any(a.startswith("orders-db") for a in gathered.decision["anomalous"]), gathered.decision["queries"]

            # Alertmanager notified its receiver within 10 s of the diagnosis.
            await asyncio.to_thread(hook.wait_for, lambda posts: ours(posts, incident_id, "firing"), 10.0,
                                    "the incident firing in Alertmanager")
            arrived = time.time()
            assert arrived - ranked.at.timestamp() <= 10, f"{arrived - ranked.at.timestamp():.1f} s after diagnosis"
            (alert,) = [a for a in ours(hook.posts, incident_id, "firing")[0]["alerts"]
                        if a["labels"]["incident"] == incident_id]
            assert alert["labels"]["root_cause"] == "orders-db"
            assert "failover_database" in alert["annotations"]["proposed_actions"]

            # The escalation policy re-pages every second, through the signed webhook, until acknowledged.
            await wait_for(lambda: len(escalator_pages(service, incident_id)) >= 2, 15)
            signed = [r for r in pages.requests if r["json"].get("incident_id") == incident_id]
            assert signed and all(signing.verify(b"s3cret", r["body"], r["headers"], time.time()) for r in signed)
            async with httpx.AsyncClient(base_url=service.http_url, timeout=30) as http:
                acked = await http.post(f"/api/v1/incidents/{incident_id}/ack", json={},
                                        headers={"authorization": f"Bearer {operator}"})
                assert acked.status_code == 200, acked.text
                paged = len(escalator_pages(service, incident_id))
                await asyncio.sleep(3)  # three repeat intervals
                assert len(escalator_pages(service, incident_id)) <= paged + 1, "re-paged after the acknowledgement"
                settled = len(escalator_pages(service, incident_id))
                await asyncio.sleep(2)
                assert len(escalator_pages(service, incident_id)) == settled

                failover = next(a for a in row["actions"] if a["type"] == "failover_database")
                approved = await http.post(f"/api/v1/incidents/{incident_id}/actions/{failover['index']}/approve",
                                           json={"reason": "orders-db is out of connections"},
                                           headers={"authorization": f"Bearer {approver}"})
                assert approved.status_code == 200, approved.text

            await wait_for(lambda: service.parts.store.incident(incident_id)["status"] == "resolved", 60)
            await asyncio.to_thread(hook.wait_for, lambda posts: ours(posts, incident_id, "resolved"), 15.0,
                                    "the incident's alert resolved")
            assert any(f.fixed_by and f.fixed_by[1] == "failover_database" for f in sim.faults), "the failover fixed it"
        finally:
            await sim.stop()
            await service.stop()
            await exporter.stop()
