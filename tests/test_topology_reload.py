"""A live `rtem run` whose topology file changes: a good change is checked, swapped in and audited with
its diff, and the next incident is correlated and diagnosed with it; a bad change is refused at its
file:line, audited, and the topology in force keeps working."""

import httpx
import pytest
import yaml

from agent.run import Service
from agent.tokens import TokenStore
from rules import Topology
from tests.live import anomaly, publish, settings, wait_for

pytestmark = pytest.mark.integration

BEFORE = {"entities": [{"id": "web", "type": "service"}, {"id": "api", "type": "service"},
                       {"id": "web-0", "type": "instance"}, {"id": "api-0", "type": "instance"}],
          "relations": [{"source": "web-0", "target": "web", "type": "instance_of"},
                        {"source": "api-0", "target": "api", "type": "instance_of"}]}
# api-1 is new, and web now calls api: anomalies on web-0 and api-1 at once are one incident
AFTER = {"entities": BEFORE["entities"] + [{"id": "api-1", "type": "instance"}],
         "relations": BEFORE["relations"] + [{"source": "api-1", "target": "api", "type": "instance_of"},
                                             {"source": "web", "target": "api", "type": "calls"}]}


def records(service, kind):
    return service.parts.audit.records(kind=kind)


def ranked(service, incident_id):
    return [c["entity"] for r in service.parts.audit.records(incident_id=incident_id, kind="causes.ranked")
            for c in r.decision["root_causes"]]


async def test_a_changed_topology_is_used_and_a_bad_one_refused(tmp_path, nats_server, bus):
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(BEFORE))
    cfg = settings(tmp_path, nats_server, topology=path, http_port=0)
    service = await Service(cfg, Topology.load(path), dry_run=True, poll_s=0.05).start()
    tokens = TokenStore(cfg.db_path)
    author, viewer = tokens.create("ann", "rule_author")[0], tokens.create("vic", "viewer", services=["web"])[0]
    tokens.close()
    api = httpx.AsyncClient(base_url=service.http_url, timeout=10)
    try:
        [start] = records(service, "topology.loaded")
        assert start.inputs["via"] == "start" and start.decision["diff"] is None

        path.write_text(yaml.safe_dump(AFTER))
        loaded = await wait_for(lambda: records(service, "topology.loaded")[1:], timeout=10)
        after = Topology.load(path).digest
        assert loaded[0].inputs["via"] == "watch" and loaded[0].decision["digest"] == after
        assert loaded[0].decision["diff"] == {
            "entities_added": ["api-1"], "entities_removed": [], "entities_changed": [],
            "relations_added": ["api-1 instance_of api", "web calls api"], "relations_removed": []}

        events = [anomaly(f"w{i}", "web-0", i) for i in range(10)] + [anomaly(f"p{i}", "api-1", i) for i in range(10)]
        await publish(bus, events)
        opened = await wait_for(lambda: records(service, "incident.opened"))
        await wait_for(lambda: ranked(service, opened[0].incident_id), timeout=15)
        # correlation linked the two through the new `calls`, and diagnosis knows api-1
        assert [r.incident_id for r in records(service, "incident.opened")] == [opened[0].incident_id]
        assert opened[0].versions["topology"] == after
        assert {"web-0", "api-1"} <= set(service.parts.store.incident(opened[0].incident_id)["entities"])
        assert "api-1" in ranked(service, opened[0].incident_id)

        path.write_text('{"nodes": [{"id": "web"}]}\n')
        [refused] = await wait_for(lambda: records(service, "topology.refused"), timeout=10)
        assert refused.decision["active"] == after
        assert refused.decision["error"]["line"] == 1 and "unknown key 'nodes'" in refused.reasons[0]
        assert str(path) in refused.reasons[0]
        answer = await api.post("/api/v1/topology/reload", headers={"authorization": f"Bearer {author}"})
        assert answer.status_code == 422 and answer.json()["detail"] == [refused.reasons[0]]
        shown = (await api.get("/api/v1/topology", headers={"authorization": f"Bearer {author}"})).json()
        assert shown["digest"] == after and shown["reload"]["last_result"]["status"] == "refused"
        scoped = (await api.get("/api/v1/topology", headers={"authorization": f"Bearer {viewer}"})).json()
        assert {e["id"] for e in scoped["entities"]} == {"web", "web-0"} and scoped["reload"] is None
        assert scoped["relations"] == [{"source": "web-0", "target": "web", "type": "instance_of"}]

        # the topology in force still works: a later fault on api-1 is its own incident, diagnosed with it
        await publish(bus, [anomaly(f"q{i}", "api-1", 3000 + i) for i in range(10)])
        second = await wait_for(lambda: records(service, "incident.opened")[1:])
        await wait_for(lambda: ranked(service, second[0].incident_id), timeout=15)
        assert second[0].versions["topology"] == after
        assert ranked(service, second[0].incident_id)[0] == "api-1"
        assert service.parts.topology.current().digest == after
    finally:
        await api.aclose()
        await service.stop()
