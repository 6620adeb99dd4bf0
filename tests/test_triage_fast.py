"""The hot path's shortcuts give exactly what the plain code gave (issue 16): the detection answer cache
keyed by values read straight from the event, and event rows encoded without json.dumps' per-call cost.

Each test holds today's plain computation (`lookup` over `Detector.fact`, `json.dumps`, `format_time`) next
to the shortcut, over a varied set of events, and compares them value for value or byte for byte.
"""

import json
import random
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from agent.store import EVENT_COLUMNS, IncidentStore, event_row
from bus import Event, format_time, parse_event
from rules import Detector, Topology, load_detections
from rules._engine import CompiledRuleset, lookup
from tests.helpers import cloud_event

TOPOLOGY = Topology.from_dict({
    "entities": [{"id": "api", "type": "service"}, {"id": "api-0", "type": "instance"},
                 {"id": "db", "type": "database"}, {"id": "node-1", "type": "host"}],
    "relations": [{"source": "api-0", "target": "api", "type": "instance_of"},
                  {"source": "api-0", "target": "node-1", "type": "runs_on"},
                  {"source": "api", "target": "db", "type": "uses"}],
})

# Every kind of path a condition can name: the event's fields, its rank and place, attributes at one and
# two levels (and a key that itself holds a dot), the whole attributes mapping, and paths that name nothing.
DETECTIONS = """
    version: 1
    detections:
      - id: by-fields
        match: {type: rtem.log, source: /tests, id: {ne: x}, message: {matches: "disk"}, subject: {in: [api-0, db]}}
      - id: by-rank
        match: {severity_rank: {gte: 2}}
      - id: by-place
        match: {service: api, entity_type: instance, host: node-1}
      - id: by-attributes
        match: {attributes.status: resolved, attributes.host.name: node-1, attributes.deep.level: {gt: 3}}
      - id: by-flags
        match: {attributes.flag: true, attributes.count: 1, attributes.ratio: {lt: 0.5}}
      - id: by-presence
        match: {attributes: {exists: true}, attributes.tags: {exists: true}, nothing.here: {exists: false}}
      - id: by-odd-paths
        match: {any: [{"attributes.": x}, {"attributes..x": y}, {severity.rank: 1}, {service.name: z}]}
"""


def varied_events(n: int = 400, seed: int = 16) -> list[Event]:
    """Events whose values the paths above find, miss, or find as lists and mappings."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, 10, tzinfo=timezone.utc)
    events = []
    for i in range(n):
        attributes = {}
        for key, values in {
            "status": ["resolved", "firing", None, 1],
            "host.name": ["node-1", "node-2", ""],
            "host": [{"name": "node-1"}, "node-1", None],
            "deep": [{"level": 5}, {"level": 2}, {"level": "5"}, {}],
            "flag": [True, False, 1, 0, "true"],
            "count": [1, 1.0, True, 2, "1"],
            "ratio": [0.25, 0.5, 0.75, -0.0, 1e6],  # 1e300: durable-rules refuses (error 204)
            "tags": [["a", "b"], [], None],
            ".x": ["y", "z"],
            "": ["x"],
        }.items():
            if rng.random() < 0.6:
                attributes[key] = rng.choice(values)
        doc = cloud_event(f"ev-{i}", rng.choice(["api-0", "db", "api", "node-1", "ghost"]),
                          format_time(start + timedelta(milliseconds=rng.randrange(10**7))),
                          type=rng.choice(["rtem.log", "rtem.alert", "rtem.metric.anomaly"]),
                          severity=rng.choice(["info", "warning", "error", "critical"]),
                          message=rng.choice(["", "disk full", "ok"]), **attributes)
        events.append(parse_event(json.dumps(doc)))
    return events


def detector(tmp_path, whole_attributes: bool = True) -> Detector:
    """Over DETECTIONS; without the rule naming `attributes` as a whole (a mapping: no fact is cacheable)."""
    text = textwrap.dedent(DETECTIONS)
    if not whole_attributes:
        text = text.replace("{attributes: {exists: true}, ", "{")
    (tmp_path / "rules.yaml").write_text(text)
    return Detector(load_detections(tmp_path), TOPOLOGY)


def test_values_read_from_the_event_are_what_the_fact_held(tmp_path):
    det = detector(tmp_path)
    paths = list(det._ruleset.fields)
    assert {"id", "severity_rank", "service", "attributes", "attributes.host.name", "nothing.here",
            "attributes..x", "service.name"} <= set(paths)
    found = set()
    for event in varied_events():
        direct = tuple(read(event) for read in det._reads)
        plain = tuple(lookup(det.fact(event), path) for path in paths)
        assert direct == plain and [type(v) for v in direct] == [type(v) for v in plain], (event, paths)
        found.update(p for p, v in zip(paths, direct) if v is not None)
    # the events reach every path that can name something, so the comparison above is not of Nones
    assert found >= set(paths) - {"nothing.here", "severity.rank", "service.name", "attributes."}


@pytest.mark.parametrize("whole_attributes", [False, True], ids=["cached", "uncacheable"])
def test_the_answer_cache_gives_what_the_engine_gives(tmp_path, whole_attributes):
    det = detector(tmp_path, whole_attributes)
    assert ("attributes" in det._ruleset.fields) == whole_attributes
    fresh = CompiledRuleset({d.id: d.match or {} for d in det.detections.detections}, name="uncached")
    hits = 0
    try:
        for event in varied_events():
            fired = det._ruleset.match_values(tuple(read(event) for read in det._reads))
            fresh._answers.clear()  # the engine itself, every time
            assert list(fired) == fresh.match(det.fact(event)), event
            assert [s.rule for s in det.observe(event)] == list(fired)
            hits += bool(fired)
    finally:
        fresh.close()
    # Over 400 events, far fewer distinct answers are asked of the engine when values repeat
    assert bool(det._ruleset._answers) != whole_attributes
    assert len(det._ruleset._answers) < 400 or whole_attributes
    assert 20 < hits < 380, "some events fire rules and some do not"


def test_facts_with_lists_or_mappings_are_answered_every_time_not_cached():
    ruleset = CompiledRuleset({"tagged": {"tags": {"exists": True}}, "prod": {"env": "prod"}}, name="unhashable")
    try:
        assert ruleset.match({"tags": ["a"], "env": "prod"}) == ["tagged", "prod"]
        assert ruleset.match({"tags": {"a": 1}}) == ["tagged"]
        assert ruleset._answers == {}
        assert ruleset.match({"env": "prod"}) == ["prod"]
        assert ruleset.match({"env": "prod"}) == ["prod"]  # from the cache
        assert list(ruleset._answers) == [(None, "prod")]
    finally:
        ruleset.close()


def plain_event_row(event: Event, incident_id, signals, received_at) -> tuple:
    """`event_row` as it was before issue 16: the reference the stored bytes must keep."""
    return (event.id, event.ts, format_time(event.time), event.type, event.subject, event.severity,
            event.source, event.message, json.dumps(event.attributes), incident_id,
            json.dumps(list(signals)) if signals else None, received_at)


def row_cases() -> list[tuple[Event, str | None, tuple[str, ...]]]:
    """Parsed events, and events built in code (another time zone, microseconds to truncate, values
    json.dumps writes in its own way: non-ASCII, escapes, floats, big integers, nesting)."""
    cases = [(event, f"inc-{i % 3}" if i % 2 else None, ("rule-a", "rülé") if i % 5 == 0 else ())
             for i, event in enumerate(varied_events(120, seed=61))]
    odd = {"é": "naïve 日本 \u2028 \"quoted\" \\ \t\n", "big": 10**30, "neg": -7, "f": 3.141592653589793,
           "tiny": 5e-324, "nested": {"a": [1, {"b": [None, True, False]}], "": {}}, "empty": [], "z": -0.0}
    zones = [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    for i, zone in enumerate(zones):
        moment = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=zone)
        for attributes in ({}, odd, {"only": "one"}):
            event = Event(id=f"built-{i}-{len(attributes)}", source="/tests", type="rtem.log", time=moment,
                          subject="api-0", severity="error", message="ünïcode", attributes=attributes)
            cases.append((event, None if attributes else "inc-x", ("r1",) if attributes is odd else ()))
    return cases


def test_event_rows_are_byte_identical_to_the_plain_encoding(tmp_path):
    cases = row_cases()
    received = "2024-03-01T00:00:00+00:00"
    fast = [event_row(event, incident, signals, received) for event, incident, signals in cases]
    plain = [plain_event_row(event, incident, signals, received) for event, incident, signals in cases]
    for new, old in zip(fast, plain):
        assert [type(v) for v in new] == [type(v) for v in old]
        assert [v.encode("utf-8") if isinstance(v, str) else v for v in new] == \
               [v.encode("utf-8") if isinstance(v, str) else v for v in old], new[0]
    assert any(row[8] == "{}" for row in fast) and any("\\u65e5" in row[8] for row in fast)
    assert any(row[2].endswith(".999Z") for row in fast)

    # and as stored: the same bytes in every column of a real SQLite store
    stored = {}
    for name, rows in (("fast", fast), ("plain", plain)):
        store = IncidentStore(tmp_path / f"{name}.db")
        with store.transaction():
            store.insert_events(rows)
        columns = ", ".join(f"CAST({c} AS BLOB)" if c != "ts" else c for c in EVENT_COLUMNS)
        stored[name] = store.db.connection().execute(f"SELECT {columns} FROM events ORDER BY id").fetchall()
    assert len(stored["fast"]) == len(cases)
    assert stored["fast"] == stored["plain"]


def test_an_attribute_json_cannot_hold_says_so_as_json_dumps_does():
    event = Event(id="bad", source="/tests", type="rtem.log", time=datetime(2024, 1, 1, tzinfo=timezone.utc),
                  subject="api-0", attributes={"when": datetime(2024, 1, 1)})
    try:
        event_row(event, None, (), "now")
    except TypeError as exc:
        assert "Object of type datetime is not JSON serializable" in str(exc)
    else:
        raise AssertionError("a datetime attribute was encoded")
