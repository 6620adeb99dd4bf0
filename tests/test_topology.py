"""Topology files loaded strictly (errors at file:line:column), `rtem topology check`, the diff and
merge that reloads and discovery audit, the reloader's refusals, and the discovery mapping (pure)."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.discovery import Labels, Mapping, build_topology, render
from agent.topology_reload import TopologyReloader, merge_topologies
from rules import Entity, Relation, Topology, TopologyError
from bus import parse_event
from rules.topology_check import check_topology_file, diff_topologies
from tests.helpers import EXAMPLES, ROOT, cloud_event, write_events

runner = CliRunner()
GOOD = "entities:\n  - {id: web, type: service}\n  - {id: web-0, type: instance}\nrelations:\n  - {source: web-0, target: web, type: instance_of}\n"


@pytest.mark.parametrize("name, text, line, column, words", [
    ("nodes.json", '{\n  "nodes": [{"id": "a"}]\n}', 2, 3, "unknown key 'nodes' (did you mean `entities`?"),
    ("edges.yaml", "entities: []\nedges: []\n", 2, 1, "unknown key 'edges' (did you mean `relations`?"),
    ("list.yaml", "- {id: a, type: service}\n", 1, 1, "the document is a list, not a mapping"),
    ("empty.yaml", "", 1, 1, "the file is empty"),
    ("untyped.yaml", "entities:\n  - {id: a, type: service}\n  - {id: b}\n", 3, 5, "entities[1]: `type` is missing"),
    ("noid.json", '{"entities": [\n {"type": "host"}]}', 2, 2, "entities[0]: `id` is missing"),
    ("kind.yaml", "entities:\n  - {id: a, type: servce}\n", 2, 13, "entities[0].type: 'servce' is not a known type"),
    ("rel.yaml", "entities: [{id: a, type: service}]\nrelations:\n  - {source: a, target: a, type: depends}\n",
     3, 28, "relations[0].type: 'depends' is not a known type (one of calls, uses, instance_of, runs_on)"),
    ("unknown.json", '{"entities": [{"id": "a", "type": "service"}],\n"relations": [\n\t{"source": "a", "target": "b", '
                     '"type": "calls"}]}', 3, 18, "relations[0] names unknown entity 'b'"),
    ("twice.yaml", "entities:\n  - {id: a, type: service}\n  - {id: a, type: host}\n", 3, 6,
     "entity 'a' is defined twice (first at entities[0])"),
    ("repeat.yaml", "entities: [{id: a, type: service}, {id: b, type: service}]\nrelations:\n"
                    "  - {source: a, target: b, type: calls}\n  - {source: a, target: b, type: calls}\n", 4, 5,
     "relations[1] repeats relations[0]"),
    ("shape.yaml", "entities: {a: service}\n", 1, 1, "entities: should be a list"),
    ("types.yaml", "entities:\n  - {id: a, type: service, tier: high}\n", 2, 28, "entities[0].tier:"),
    ("extra.yaml", "entities: [{id: a, type: service}]\nrelations:\n  - {source: a, target: a, type: uses, weight: 2}\n",
     3, 40, "relations[0].weight: unknown field"),
    ("syntax.json", '{"entities": [}', 1, 15, "not valid JSON"),
    ("syntax.yaml", "entities: [\n", 2, 1, "YAML syntax"),
])
def test_a_wrong_topology_is_an_error_at_its_line(tmp_path, name, text, line, column, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TopologyError) as caught:
        Topology.load(path)
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}:{column}: ") and words in str(caught.value)


def test_a_missing_file_says_so_without_a_line(tmp_path):
    with pytest.raises(TopologyError, match="cannot read the topology"):
        Topology.load(tmp_path / "nope.json")


def test_from_dict_refuses_a_wrong_shape_too():
    with pytest.raises(TopologyError, match=r"^<topology>: unknown key 'nodes'"):
        Topology.from_dict({"nodes": []})


@pytest.mark.parametrize("path", [EXAMPLES / "boutique-topology.json", ROOT / "agent" / "demo" / "topology.yaml"])
def test_shipped_topologies_load_and_check(path):
    result = check_topology_file(path)
    assert result.ok and result.topology == Topology.load(path)
    assert sum(result.counts()["entities"].values()) == len(result.topology.entities)


def test_check_warns_about_what_is_legal_but_probably_not_meant(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("entities:\n  - {id: web, type: service}\n  - {id: lonely, type: host}\n  - {id: web-0, type: instance}\n"
                    "  - {id: db, type: database}\nrelations:\n  - {source: web-0, target: web, type: instance_of}\n"
                    "  - {source: web, target: db, type: runs_on}\n")
    warnings = [str(w) for w in check_topology_file(path).warnings]
    assert warnings == [
        f"{path}:3:5: entity 'lonely' has no relation (correlation places its signals by time only; add how it is connected)",
        f"{path}:8:5: relations[1]: a service runs_on a database (web runs_on db) is probably not meant "
        "(`runs_on` joins cache or database or instance or queue or service to host)"]


def test_rtem_topology_check_exit_codes_and_json(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.json"
    good.write_text(GOOD)
    bad.write_text('{"nodes": []}')
    ok = runner.invoke(app, ["topology", "check", str(good)])
    assert ok.exit_code == 0 and "entities: 2 (1 instance, 1 service)" in ok.stdout and "relations: 1 (1 instance_of)" in ok.stdout
    refused = runner.invoke(app, ["topology", "check", str(bad)])
    assert refused.exit_code == 1 and f"{bad}:1:2: unknown key 'nodes'" in refused.output
    as_json = json.loads(runner.invoke(app, ["topology", "check", str(bad), "--json"]).stdout)
    assert as_json["ok"] is False and as_json["errors"][0]["line"] == 1 and as_json["counts"] == {"entities": {}, "relations": {}}
    as_json = json.loads(runner.invoke(app, ["topology", "check", str(good), "--json"]).stdout)
    assert as_json["ok"] is True and as_json["counts"]["relations"] == {"instance_of": 1} and as_json["warnings"] == []


def test_rtem_topology_check_events_names_what_the_topology_misses(tmp_path):
    """--events: the entities recordings name that the topology does not hold (with how many events name
    each), and the calls between services their traces show that it does not list."""
    (tmp_path / "shop.yaml").write_text(
        "entities:\n  - {id: web, type: service}\n  - {id: cart, type: service}\n  - {id: web-0, type: instance}\n"
        "  - {id: cart-0, type: instance}\nrelations:\n  - {source: web-0, target: web, type: instance_of}\n"
        "  - {source: cart-0, target: cart, type: instance_of}\n")
    at = "2024-05-01T12:00:00Z"
    lines = [cloud_event(f"t{n}", "cart-0", at, type="rtem.trace.anomaly", caller="web-0", callee="cart-0",
                         anomaly="PD") for n in (1, 2)]
    # a caller the topology lacks is not named: its report is evidence about the callee
    lines.append(cloud_event("t3", "cart-0", at, type="rtem.trace.anomaly", caller="lb-0", callee="cart-0",
                             anomaly="PD"))
    lines += [cloud_event("m1", "cart-9", at, metric="cpu"), cloud_event("m2", "cart-9", at, metric="mem"),
              cloud_event("m3", "db-0", at, metric="cpu")]
    recording = write_events(tmp_path / "rec.events.jsonl", [*lines, b"{not json"])
    said = runner.invoke(app, ["topology", "check", str(tmp_path / "shop.yaml"), "--events", str(tmp_path)])
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    assert "events: 6 read, naming 3 entities, 2 of them not in the topology" in text
    assert "cart-9 (2), db-0 (1): named by events (how many in brackets) but not in the topology" in text
    assert "the traces show calls the topology does not list: web -> cart (2)" in text
    as_json = json.loads(runner.invoke(app, ["topology", "check", str(tmp_path / "shop.yaml"), "--events",
                                             str(recording), "--json"]).stdout)
    assert as_json["events"] == {"events": 6, "entities": 3, "unlisted": {"cart-9": 2, "db-0": 1},
                                 "unlisted_calls": {"web -> cart": 2}, "described": {}, "placed": {}, "misplaced": {}}
    calls = "  - {source: web, target: cart, type: calls}\n"
    (tmp_path / "full.yaml").write_text((tmp_path / "shop.yaml").read_text() + calls)
    full = json.loads(runner.invoke(app, ["topology", "check", str(tmp_path / "full.yaml"), "--events",
                                          str(recording), "--json"]).stdout)
    assert full["events"]["unlisted_calls"] == {}
    missing = runner.invoke(app, ["topology", "check", str(tmp_path / "shop.yaml"), "--events", str(tmp_path / "no")])
    assert missing.exit_code == 2 and "no such file or directory" in missing.output


def test_rtem_topology_check_events_says_where_the_events_place_entities(tmp_path):
    """--events: where the collectors' `host.name` places an instance the topology places on no host
    (diagnosis reads it), and where it places one elsewhere than the topology (the topology wins: a warning);
    a host named on a service with instances, on a host, or on a trace places nothing, and the latest event
    counts."""
    (tmp_path / "shop.yaml").write_text(
        "entities:\n  - {id: web, type: service}\n  - {id: web-0, type: instance}\n  - {id: web-1, type: instance}\n"
        "  - {id: node-1, type: host}\n  - {id: node-2, type: host}\nrelations:\n"
        "  - {source: web-0, target: web, type: instance_of}\n  - {source: web-1, target: web, type: instance_of}\n"
        "  - {source: web-1, target: node-1, type: runs_on}\n")
    lines = [cloud_event("a", "web-0", "2024-05-01T12:00:00Z", metric="cpu", **{"host.name": "node-1"}),
             cloud_event("b", "web-0", "2024-05-01T12:01:00Z", metric="cpu", **{"k8s.node.name": "node-2"}),
             cloud_event("c", "web-1", "2024-05-01T12:00:00Z", metric="cpu", **{"host.name": "node-2"}),
             cloud_event("d", "web", "2024-05-01T12:00:00Z", metric="grpc-mrt", **{"host.name": "node-1"}),
             cloud_event("e", "node-1", "2024-05-01T12:00:00Z", metric="cpu", **{"host.name": "node-2"}),
             cloud_event("f", "web-1", "2024-05-01T11:00:00Z", metric="cpu", **{"host.name": "node-9"}),
             cloud_event("g", "web-2", "2024-05-01T12:00:00Z", metric="cpu",
                         **{"host.name": "node-1", "service.name": "web"}),
             cloud_event("h", "web-2", "2024-05-01T12:05:00Z", type="rtem.trace.anomaly", caller="web-0",
                         callee="web-2", anomaly="PD", **{"host.name": "node-2"})]  # the caller's host
    recording = write_events(tmp_path / "rec.events.jsonl", lines)
    said = runner.invoke(app, ["topology", "check", str(tmp_path / "shop.yaml"), "--events", str(recording)])
    text = " ".join(said.output.split())
    assert said.exit_code == 0, said.output
    assert "events: 8 read, naming 5 entities, 1 of them not in the topology" in text
    assert ("not in the topology, but their events name the service each is an instance of (in brackets, from "
            "service.name or the Kubernetes workload): web-2 (web)") in text
    assert "named by events (how many in brackets)" not in text
    assert ("the events say where entities run that the topology places on no host: web-0 on node-2, web-2 on "
            "node-1") in text
    assert "the events place entities elsewhere than the topology does: web-1 on node-2, not node-1" in text
    as_json = json.loads(runner.invoke(app, ["topology", "check", str(tmp_path / "shop.yaml"), "--events",
                                             str(recording), "--json"]).stdout)
    assert as_json["events"]["placed"] == {"web-0": "node-2", "web-2": "node-1"}
    assert as_json["events"]["described"] == {"web-2": "web"} and as_json["events"]["unlisted"] == {}
    assert as_json["events"]["misplaced"] == {"web-1": {"topology": "node-1", "events": "node-2"}}


def test_events_describe_the_instances_a_topology_lacks():
    """An event about an entity the topology lacks, whose `service.name` (or owning Kubernetes workload)
    names a service or data store it holds, adds that entity as an instance of it; a trace, a name the
    topology lacks or holds as a host, and an entity it already holds describe nothing; with nothing to add
    the topology is the same object."""
    shop = topo([("web", "service"), ("db", "database"), ("web-0", "instance"), ("node-1", "host")],
                [("web-0", "instance_of", "web")])
    at = "2024-05-01T12:00:00Z"
    events = [parse_event(json.dumps(e)) for e in (
        cloud_event("a", "web-7f9c", at, metric="cpu", **{"service.name": "web", "host.name": "node-1"}),
        cloud_event("b", "web-7f9c", at, metric="cpu", **{"service.name": "db"}),  # the first word counts
        cloud_event("c", "db-1", at, message="pool exhausted", type="rtem.log", **{"k8s.statefulset.name": "db"}),
        cloud_event("d", "ghost-0", at, metric="cpu", **{"service.name": "ghost"}),
        cloud_event("e", "box-0", at, metric="cpu", **{"service.name": "node-1"}),
        cloud_event("f", "web-0", at, metric="cpu", **{"service.name": "db"}),
        cloud_event("g", "web-9", at, type="rtem.trace.anomaly", caller="web-0", callee="web-9",
                    **{"service.name": "web"}))]
    grown = shop.with_described(events)
    assert sorted(set(grown.by_id) - set(shop.by_id)) == ["db-1", "web-7f9c"]
    assert grown.entity_type("web-7f9c") == "instance" and grown.service_of("web-7f9c") == "web"
    assert grown.instances("db") == ("db-1",) and grown.service_of("web-0") == "web"
    assert grown.host_of("web-7f9c") is None, "where it runs is read where it is needed (host_said), not listed"
    assert shop.with_described(events[3:6]) is shop and "web-7f9c" not in shop


def topo(entities, relations=()):
    return Topology.from_dict({"entities": [{"id": i, "type": t, **(extra[0] if extra else {})} for i, t, *extra in entities],
                               "relations": [{"source": s, "type": k, "target": t} for s, k, t in relations]})


def test_diff_names_entities_and_relations_added_removed_changed():
    old = topo([("web", "service"), ("db", "database"), ("old", "host")], [("web", "uses", "db")])
    new = topo([("web", "service", {"tier": 1}), ("db", "database"), ("cache", "cache")], [("web", "uses", "cache")])
    diff = diff_topologies(old, new)
    assert diff.to_dict() == {"entities_added": ["cache"], "entities_removed": ["old"], "entities_changed": ["web"],
                              "relations_added": ["web uses cache"], "relations_removed": ["web uses db"]}
    assert diff.summary() == "1 entities added, 1 entities removed, 1 entities changed, 1 relations added, 1 relations removed"
    assert diff_topologies(new, new).empty


def test_the_file_wins_every_conflict_with_discovery():
    file = topo([("web", "service", {"tier": 1}), ("web-0", "instance"), ("host-a", "host")],
                [("web-0", "instance_of", "web"), ("web-0", "runs_on", "host-a")])
    # what discovery finds names entities only the file has, and one nobody has: not checked like a file
    found = Topology(entities=(Entity(id="web", type="service"), Entity(id="host-b", type="host"),
                               Entity(id="web-1", type="instance")),
                     relations=tuple(Relation(source=s, type=k, target=t) for s, k, t in [
                         ("web-0", "runs_on", "host-b"), ("web-1", "runs_on", "host-b"), ("web-1", "instance_of", "web"),
                         ("web-1", "calls", "nowhere")]))
    merged = merge_topologies(file, found)
    assert merged.by_id["web"].tier == 1 and merged.host_of("web-0") == "host-a"
    assert merged.host_of("web-1") == "host-b" and merged.service_of("web-1") == "web"
    assert "nowhere" not in merged and not merged.targets("web-1", "calls")  # ends nowhere: dropped


def test_the_reloader_swaps_a_good_file_and_refuses_a_bad_one(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text(GOOD)
    audit = AuditLog(tmp_path / "rtem.db")
    try:
        source = TopologyReloader(path, audit=audit)
        before = source.current()
        assert source.check_now().status == "unchanged"
        path.write_text(GOOD.replace("relations:", "  - {id: web-host, type: host}\nrelations:")
                        + "  - {source: web-0, target: web-host, type: runs_on}\n")
        loaded = source.check_now()
        assert loaded.status == "loaded" and source.current().host_of("web-0") == "web-host"
        assert loaded.diff.relations_added == ("web-0 runs_on web-host",) and loaded.previous == before.digest
        path.write_text("entities:\n  - {id: web}\n")
        refused = source.check_now()
        assert refused.status == "refused" and source.current().host_of("web-0") == "web-host"
        assert (refused.error.line, refused.error.column) == (2, 5)
        assert source.check_now().status == "unchanged"  # refused once, not again every look
        kinds = [(r.kind, r.inputs.get("via")) for r in audit.records() if r.kind.startswith("topology.")]
        assert kinds == [("topology.loaded", "start"), ("topology.loaded", "check_now"), ("topology.refused", "check_now")]
        assert audit.records(kind="topology.refused")[0].decision["error"]["reason"] == "entities[0]: `type` is missing"
    finally:
        audit.close()


def test_a_bad_topology_at_start_stops_the_reloader(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"nodes": []}')
    with pytest.raises(TopologyError, match=r"t.json:1:2: unknown key 'nodes'"):
        TopologyReloader(path)


def test_the_mapping_turns_labels_into_entities_and_relations():
    mapping = Mapping.model_validate(yaml.safe_load("""
targets:
  - match: {job: "shop-.*"}
    entities: [{type: instance, id: "{instance}"}, {type: host, id: "node-{node}", labels: {zone: "{zone}"}}]
    relations: [{source: "{instance}", type: runs_on, target: "node-{node}"}]
series:
  - selector: build_info
    entities: [{type: service, id: "{service}", tier: 2}]
"""))
    found = build_topology(mapping, Labels(
        targets=[{"job": "shop-api", "instance": "api:80", "node": "1", "zone": "a"},
                 {"job": "other", "instance": "x:1", "node": "2"},
                 {"job": "shop-web", "instance": "web:80"}],
        series={"build_info": [{"service": "api"}, {"service": ""}]}))
    assert {(e.type, e.id) for e in found.entities} == {("instance", "api:80"), ("host", "node-1"),
                                                        ("instance", "web:80"), ("service", "api")}
    assert found.by_id["node-1"].labels == {"zone": "a"} and found.by_id["api"].tier == 2
    assert [(r.source, r.type, r.target) for r in found.relations] == [("api:80", "runs_on", "node-1")]
    assert render("{a}-{b}", {"a": "x", "b": "y"}) == "x-y" and render("{a}-{b}", {"a": "x"}) is None


def test_the_same_labels_in_any_order_make_the_same_topology():
    """Prometheus answers in no set order; an unchanged system must not look discovered anew."""
    mapping = Mapping.model_validate(yaml.safe_load("""
targets:
  - match: {job: shop}
    entities: [{type: instance, id: "{service}@{node}"}, {type: host, id: "{node}"}, {type: service, id: "{service}"}]
    relations: [{source: "{service}@{node}", type: runs_on, target: "{node}"},
                {source: "{service}@{node}", type: instance_of, target: "{service}"}]
"""))
    targets = [{"job": "shop", "service": service, "node": node} for service in ("api", "web", "db")
               for node in ("n1", "n2")]
    digests = {build_topology(mapping, Labels(targets=order)).digest
               for order in (targets, targets[::-1], targets[2:] + targets[:2])}
    assert len(digests) == 1


@pytest.mark.parametrize("text, line, words", [
    ("targets:\n  - entities: [{type: instance, id: '{i}', colour: red}]\n", 2, "colour"),
    ("targets:\n  - match: {job: '('}\n", 2, "not a regular expression"),
    ("series:\n  - entities: []\n", 2, "selector"),
    ("nodes: []\n", 1, "nodes"),
])
def test_a_wrong_mapping_is_an_error_at_its_line(tmp_path, text, line, words):
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as caught:
        Mapping.load(path)
    assert caught.value.line == line and words in str(caught.value) and str(caught.value).startswith(f"{path}:{line}:")
