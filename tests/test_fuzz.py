"""Property tests (hypothesis) of the doors input comes in through: the envelope parser, the Alertmanager
adapter, the rule file loaders and `rules check`, and the topology loader.

Each door has one promise: bad input gets the door's own error, with a reason (and, for rule files, a
file and a line), and never any other exception. Generated inputs are arbitrary bytes and text, arbitrary
JSON, and valid documents with one part mutated, which is where loaders hide their crashes.

Examples per property: 200, or RTEM_FUZZ_EXAMPLES (docs/testing.md, "Fuzzing"). Each crash found is pinned
as an `@example` of its property (rule and topology loaders) or in `test_fuzzing_regression`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from agent.api.ingest import _alertmanager_problems, alert_event
from bus import Event, InvalidEvent, event_from_dict, format_time, parse_event
from rules import (
    ContractError,
    RulesError,
    Topology,
    TopologyError,
    check_rules,
    load_contracts,
    load_detections,
    load_guardrails,
    packaged_rules_dir,
)

EXAMPLES = int(os.environ.get("RTEM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Properties over files write a temporary directory and parse YAML per example: half as many keep the file
# well under 20 s; check_rules also compiles the guard (durable-rules never frees a ruleset): a quarter.
FILES = settings(FUZZ, max_examples=max(EXAMPLES // 2, 10))
FEWER = settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
PACKAGED = packaged_rules_dir()


# -- regressions: crashes found by this fuzzing in code owned elsewhere ------------------------------------

def _event_at(time: str) -> dict:
    return {"specversion": "1.0", "id": "e1", "source": "/fuzz", "type": "t", "time": time, "subject": "s",
            "data": {"severity": "info"}}


def _alert(**fields) -> tuple[dict, dict]:
    alert = {"labels": {"alertname": "Down"}, "status": "firing", "startsAt": "2024-05-01T12:00:00Z"}
    payload = {"version": "4", "alerts": [alert]}
    for key, value in fields.items():
        (alert if key in ("labels", "annotations", "endsAt", "status", "fingerprint") else payload)[key] = value
    return alert, payload


def _convert(alert: dict, payload: dict) -> Event | None:
    if _alertmanager_problems(payload):
        return None  # the client is told what is wrong (400)
    return event_from_dict(alert_event(alert, payload))


# Each crashed (the exception in the id) before the API hardening of issue 11 (commit 3849b8b).
@pytest.mark.parametrize("reproduce", [
    pytest.param(lambda: parse_event(b"[" * 100_000), id="nested-json-RecursionError"),
    pytest.param(lambda: parse_event(b'{"id": ' + b"1" * 5000 + b"}"), id="5000-digits-ValueError"),
    pytest.param(lambda: parse_event('{"id": "\ud800"}'), id="lone-surrogate-UnicodeEncodeError"),
    pytest.param(lambda: parse_event(json.dumps(_event_at("0001-01-01T00:00:00+01:00"))), id="year-1-offset-OverflowError"),
    pytest.param(lambda: parse_event(json.dumps(_event_at("9999-12-31T23:59:59-01:00"))), id="year-9999-offset-OverflowError"),
    pytest.param(lambda: _convert(*_alert(commonLabels=[])), id="am-commonLabels-list-TypeError"),
    pytest.param(lambda: _convert(*_alert(status="resolved", endsAt=0)), id="am-endsAt-number-AttributeError"),
    pytest.param(lambda: _convert(*_alert(annotations=["x"])), id="am-annotations-list-TypeError"),
])
def test_fuzzing_regression(reproduce):
    """Each input answers with the door's own error (or succeeds): nothing else escapes."""
    try:
        reproduce()
    except InvalidEvent:
        pass


# -- strategies -----------------------------------------------------------------------------------------

text = st.text(max_size=24)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
                           max_leaves=16)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
# Anything datetime.fromisoformat may read, and some it may not.
timestamps = st.one_of(
    st.datetimes(timezones=offsets).map(lambda t: t.isoformat()),
    st.datetimes(timezones=offsets).map(format_time),
    st.datetimes().map(lambda t: t.isoformat()),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?(Z|z|[+-][0-9]{2}:?[0-9]{2})?\Z"),
    text)
severities = st.sampled_from(["info", "warning", "error", "critical"])


def either(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid value, sometimes any JSON value in its place."""
    return st.one_of(valid, valid, valid, json_values)


identifiers = st.text(min_size=1, max_size=64)
valid_data = st.fixed_dictionaries({"severity": severities},
                                   optional={"message": st.text(max_size=64), "attributes": st.dictionaries(text, json_values, max_size=4)})
valid_events = st.fixed_dictionaries({
    "specversion": st.just("1.0"), "id": identifiers, "source": identifiers, "type": identifiers,
    "time": st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets).map(
        lambda t: t.isoformat()),
    "subject": identifiers, "data": valid_data})
event_like = st.fixed_dictionaries({}, optional={
    "specversion": either(st.just("1.0")), "id": either(identifiers), "source": either(identifiers),
    "type": either(identifiers), "time": either(timestamps), "subject": either(identifiers),
    "datacontenttype": either(text),
    "data": either(st.fixed_dictionaries({}, optional={
        "severity": either(severities), "level": either(st.sampled_from(["warn", "crit", "debug", "loud"])),
        "message": either(text), "attributes": either(st.dictionaries(text, json_values, max_size=3))}))})


# -- the envelope -----------------------------------------------------------------------------------------

def parses_or_refuses(raw: bytes | str) -> Event | None:
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:  # the property: nothing else escapes
        assert exc.reason and isinstance(exc.reason, str)
        return None
    assert isinstance(event, Event)
    assert event.severity in ("info", "warning", "error", "critical")
    assert event.time.tzinfo is not None and event.time.utcoffset() == timedelta(0)
    return event


@FUZZ
@given(st.binary(max_size=512))
@example(b"\xff\xfe{}")
@example(b"{" * 50)
def test_parse_event_on_arbitrary_bytes(raw):
    parses_or_refuses(raw)


@FUZZ
@given(st.one_of(json_values, event_like))
@example(_event_at("0001-01-01T00:00:00+01:00"))
@example(_event_at("9999-12-31T23:59:59-01:00"))
@example({"specversion": "1.0", "data": {"level": ["unhashable"]}})
def test_parse_event_on_arbitrary_json(doc):
    note(repr(doc))
    encoded = json.dumps(doc)
    parses_or_refuses(encoded)
    parses_or_refuses(encoded.encode())
    if isinstance(doc, dict):
        try:
            event_from_dict(doc)
        except InvalidEvent:
            pass


@FUZZ
@given(st.text(max_size=200))
def test_parse_event_on_arbitrary_text(raw):
    parses_or_refuses(raw)


@FUZZ
@given(valid_events)
def test_a_valid_cloud_event_round_trips(doc):
    event = parse_event(json.dumps(doc).encode())
    assert (event.id, event.source, event.type, event.subject) == (doc["id"], doc["source"], doc["type"], doc["subject"])
    assert event.severity == doc["data"]["severity"]
    assert event.message == doc["data"].get("message", "")
    assert event.attributes == (doc["data"].get("attributes") or {})
    assert event.time == datetime.fromisoformat(doc["time"])
    # Written back out the way rtem writes events, it reads back the same.
    again = {**doc, "time": format_time(event.time),
             "data": {"severity": event.severity, "message": event.message, "attributes": event.attributes}}
    second = parse_event(json.dumps(again))
    assert second.time == event.time.replace(microsecond=event.time.microsecond // 1000 * 1000)
    assert second.model_dump(exclude={"time"}) == event.model_dump(exclude={"time"})


# -- the Alertmanager adapter -----------------------------------------------------------------------------

label_maps = st.dictionaries(st.sampled_from(["alertname", "severity", "pod", "service", "instance", "job", "entity",
                                              "rtem_entity", "team"]) | text, st.text(max_size=40), max_size=5)


def test_an_alert_whose_instance_has_no_host_still_has_a_subject():
    alert = {"labels": {"alertname": "NodeDown", "instance": ":9100"}}
    event = _convert(alert, {"version": "4", "alerts": [alert]})
    assert event is not None and event.subject == "NodeDown"


am_times = st.one_of(st.just("0001-01-01T00:00:00Z"),
                     st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                  timezones=offsets).map(lambda t: t.isoformat()))
well_typed_alerts = st.fixed_dictionaries(
    {"labels": label_maps.filter(bool)},
    optional={"status": st.sampled_from(["firing", "resolved"]), "annotations": label_maps, "startsAt": am_times,
              "endsAt": am_times, "fingerprint": st.from_regex(r"\A[0-9a-f]{16}\Z"),
              "generatorURL": st.text(max_size=40)})
well_typed_payloads = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", 4]), "alerts": st.lists(well_typed_alerts, max_size=4)},
    optional={"status": st.sampled_from(["firing", "resolved"]), "receiver": text, "groupKey": text,
              "commonLabels": label_maps, "commonAnnotations": label_maps,
              "externalURL": st.text(min_size=1, max_size=40), "groupLabels": label_maps})
any_alerts = st.fixed_dictionaries({}, optional={
    "labels": either(label_maps), "annotations": either(label_maps), "status": either(st.sampled_from(["firing", "resolved"])),
    "startsAt": either(am_times), "endsAt": either(am_times), "fingerprint": json_values, "generatorURL": json_values})
any_payloads = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "version": either(st.just("4")), "alerts": either(st.lists(either(any_alerts), max_size=3)),
    "status": json_values, "receiver": json_values, "groupKey": json_values, "commonLabels": either(label_maps),
    "commonAnnotations": either(label_maps), "externalURL": json_values}))


def converts_or_reports(payload: Any) -> list[dict]:
    """The adapter's promise: problems for the client, or events; `_publish` then checks each event."""
    problems = _alertmanager_problems(payload)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if problems:
        return []
    return [alert_event(alert, payload) for alert in payload["alerts"]]


@FUZZ
@given(well_typed_payloads)
def test_well_typed_alertmanager_payloads_become_valid_events(payload):
    docs = converts_or_reports(payload)
    assert len(docs) == len(payload["alerts"])
    for doc, alert in zip(docs, payload["alerts"]):
        event = event_from_dict(json.loads(json.dumps(doc)))
        assert event.type == "rtem.alert"
        assert event.attributes["status"] == (alert.get("status") or payload.get("status") or "firing")


@FUZZ
@given(any_payloads)
@example({"version": "4", "alerts": [{"labels": {"a": "b"}, "status": None}]})
@example({"version": 4, "alerts": [{"labels": {"a": "b"}, "startsAt": None}]})
def test_alertmanager_adapter_on_arbitrary_payloads(payload):
    note(repr(payload))
    for doc in converts_or_reports(payload):
        try:
            event_from_dict(doc)  # accepted, or a 400 that says which event and why
        except InvalidEvent:
            pass


# -- rule files --------------------------------------------------------------------------------------------

GUARDRAILS = (PACKAGED / "guardrails" / "default.yaml").read_text("utf-8")
DETECTIONS = (PACKAGED / "detect" / "default.yaml").read_text("utf-8")
RULE_TEST = (PACKAGED / "guardrails" / "default.test.yaml").read_text("utf-8")
CONTRACT = (PACKAGED / "contracts" / "restart_instance.json").read_text("utf-8")
yaml_scalars = st.one_of(scalars, st.dates(), st.datetimes(), st.sampled_from(
    ["5m", "90s", "1h", "5m\n", "0s", "22:00", "24:00", "Europe/Berlin", "Mars/Olympus", "require_approval", "deny",
     "allow", "in", "any", "all", "eq", "matches", "(", "target_type", "params.replicas", "contract.x", "mon"]))
yaml_values = st.recursive(yaml_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.sampled_from(["id", "match", "in", "any", "all", "gt", "eq", "exists", "matches", "from", "to", "days",
                     "timezone", "window", "max", "per", "percent", "count", "for", "within", "first", "then"])
    | text | st.integers(-2, 2) | st.none(),  # YAML keys need not be strings
    kids, max_size=3), max_leaves=8)


@st.composite
def mutated(draw, text: str) -> str:
    """A valid rule file with a few parts of its document replaced, deleted or added, dumped back to YAML,
    and sometimes a few characters of the text changed too."""
    doc = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate(draw, doc)
    try:
        out = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        out = text
    for _ in range(draw(st.integers(0, 2))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        out = out[:at] + draw(st.sampled_from(["", " ", "\n", ":", "-", "[", "{", "'", "&a ", "*a", "!!", "\t", "#"])) + out[at + 1:]
    return out


def _mutate(draw, node: Any) -> Any:
    if isinstance(node, dict) and node and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(node, key=str)))
        action = draw(st.sampled_from(["descend", "descend", "replace", "delete", "add"]))
        copy = dict(node)
        if action == "delete":
            del copy[key]
        elif action == "add":
            copy[draw(st.sampled_from(["extra", "id", "match", "during", "state", "limit", "cap", "outcome"]))] = draw(yaml_values)
        elif action == "replace":
            copy[key] = draw(yaml_values)
        else:
            copy[key] = _mutate(draw, node[key])
        return copy
    if isinstance(node, list) and node and draw(st.integers(0, 3)):
        index = draw(st.integers(0, len(node) - 1))
        action = draw(st.sampled_from(["descend", "descend", "replace", "delete", "duplicate"]))
        copy = list(node)
        if action == "delete":
            del copy[index]
        elif action == "duplicate":
            copy.insert(index, node[index])
        elif action == "replace":
            copy[index] = draw(yaml_values)
        else:
            copy[index] = _mutate(draw, node[index])
        return copy
    return draw(yaml_values)


yaml_texts = st.one_of(st.text(max_size=200), yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True,
                                                                                      sort_keys=False)))


def located(exc: RulesError, directory: Path) -> None:
    assert exc.file and exc.line >= 1 and exc.column >= 1 and exc.reason, exc
    assert Path(exc.file).resolve().is_relative_to(directory.resolve()), exc


def loads_or_refuses(load: Callable[[Path], Any], name: str, content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            load(directory)
        except RulesError as exc:
            located(exc, directory)


# YAML that crashed the loaders before issue 11's fuzzing (each now a RulesError at its line).
RECURSIVE_ALIAS = "version: 1\nrules: &r\n  - *r\n"
ALIAS_BOMB = "version: 1\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7)) + "rules: []\n"
BAD_DATE = "version: 1\nrules:\n  - id: x\n    outcome: deny\n    reason: r\n    match: {date: 2024-02-30}\n"
DURATION_NEWLINE = "version: 1\ndetections:\n  - id: x\n    match: {type: t}\n    threshold: {count: 2, window: \"5m\\n\"}\n"


@FILES
@given(st.one_of(mutated(GUARDRAILS), yaml_texts))
@example(RECURSIVE_ALIAS)
@example("version: 1\nrules: []\nx: &x {<<: *x}\n")
@example("version: 1\nd: &d {id: x, outcome: deny, reason: r}\nrules:\n- <<: *d\n  match: {nope: 1}\n")
@example(ALIAS_BOMB)
@example(BAD_DATE)
@example("version: 1\nrules:\n- id: x\n  outcome: deny\n  reason: r\n  during: [{from: 2024-02-30, to: 2024-03-01}]\n")
@example("\ud800")
@example("version: 1\nrules: []\n\x1f")
@example("version: 1\n1: x\nnull: y\nrules:\n- {id: x, outcome: deny, reason: r, 1: a, null: b}\n")
@example("version: 1\nrules:\n- {id: x, outcome: deny, reason: r, match: {1: x, null: y, params: {2: z}}}\n")
def test_guardrail_files_load_or_refuse_at_a_line(content):
    note(content)
    loads_or_refuses(load_guardrails, "rules.yaml", content)


@FILES
@given(st.one_of(mutated(DETECTIONS), yaml_texts))
@example(DURATION_NEWLINE)
@example(RECURSIVE_ALIAS.replace("rules", "detections"))
@example(ALIAS_BOMB.replace("rules", "detections"))
@example("version: 1\ndetections:\n  - id: x\n    match: {time: 2024-13-01}\n")
@example("? #'\n: null\nid: null\n")
@example("version: 1\ndetections:\n  - id: x\n    1: 2\n    null: 3\n    match: {1: x, null: y}\n")
def test_detection_files_load_or_refuse_at_a_line(content):
    note(content)
    loads_or_refuses(load_detections, "detect.yaml", content)


@FILES
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), mutated(CONTRACT).map(
    lambda t: json.dumps(yaml.safe_load(t), default=str) if _is_yaml(t) else t)))
def test_contract_files_load_or_refuse_with_a_reason(content):
    note(content)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "restart_instance.json").write_text(content, "utf-8", errors="surrogatepass")
        try:
            load_contracts(tmp)
        except ContractError as exc:
            assert exc.source.startswith(tmp) and exc.reason


def _is_yaml(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # PyYAML raises ValueError for a timestamp it cannot build (+24:00)
        return False
    return True


@FEWER
@given(guardrails=st.one_of(mutated(GUARDRAILS), yaml_texts, st.just(GUARDRAILS)),
       detections=st.one_of(mutated(DETECTIONS), st.just(DETECTIONS)),
       tests=st.one_of(mutated(RULE_TEST), st.just(RULE_TEST), st.none()))
@example(guardrails=RECURSIVE_ALIAS, detections=DURATION_NEWLINE, tests=None)
@example(guardrails=BAD_DATE, detections=DETECTIONS, tests=RULE_TEST)
@example(guardrails="version: 1\nrules:\n- {id: x, outcome: deny, reason: r, match: {1: x, null: y}}\n",
         detections="version: 1\ndetections: [{id: x, match: {1: x}}]\n", tests="version: 1\n1: x\ntests: []\n")
def test_rules_check_reports_findings_at_a_line(guardrails, detections, tests):
    note(f"guardrails:\n{guardrails}\ndetections:\n{detections}\ntests:\n{tests}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in (("guardrails/default.yaml", guardrails), ("detect/default.yaml", detections),
                              ("guardrails/default.test.yaml", tests)):
            if content is not None:
                (root / name).parent.mkdir(exist_ok=True)
                (root / name).write_text(content, "utf-8", errors="surrogatepass")
        report = check_rules(root, now=datetime(2026, 1, 1, tzinfo=UTC))
        for finding in report.findings:
            assert finding.file and finding.line >= 1 and finding.column >= 1 and finding.message, finding
        if report.ok:
            assert report.guardrails is not None and report.guard is not None


# -- topology -----------------------------------------------------------------------------------------------

entity_types = st.sampled_from(["service", "instance", "host", "database", "cache", "queue", "external"])
entities = st.fixed_dictionaries({"id": either(st.sampled_from(["a", "b", "c"]) | text), "type": either(entity_types)},
                                 optional={"tier": either(st.integers(0, 5)), "labels": either(st.dictionaries(text, text, max_size=2)),
                                           "zone": json_values})
relations = st.fixed_dictionaries({"source": either(st.sampled_from(["a", "b", "c"])),
                                   "target": either(st.sampled_from(["a", "b", "c"])),
                                   "type": either(st.sampled_from(["calls", "uses", "instance_of", "runs_on"]))})
topologies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "entities": either(st.lists(either(entities), max_size=4)), "relations": either(st.lists(either(relations), max_size=4)),
    "name": json_values}))


@FUZZ
@given(topologies)
@example({"entities": [{"id": "a", "type": "service"}], "relations": [{"source": "a", "target": "a", "type": "calls"}]})
@example({"entities": [{"id": "a", "type": "service", "labels": {"k": ["unhashable"]}}]})
def test_topology_from_dict_builds_or_refuses(doc):
    try:
        topology = Topology.from_dict(doc)
    except TopologyError as exc:
        assert str(exc).startswith("<topology>: ")
        return
    ids = {e.id for e in topology.entities}
    assert len(ids) == len(topology.entities)
    for relation in topology.relations:
        assert relation.source in ids and relation.target in ids
        assert relation.target in topology.targets(relation.source, relation.type)
    assert topology.digest  # serialisable


@FILES
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 topologies.map(lambda d: yaml.safe_dump(d).encode()), topologies.map(lambda d: json.dumps(d).encode())),
       st.sampled_from(["topology.yaml", "topology.json"]))
@example(b"\xff\xfe", "topology.yaml")
@example(b"[" * 5000, "topology.json")
@example(b"[" * 5000, "topology.yaml")
@example(b"entities: [{id: a, type: service, labels: {since: 2024-02-30}}]", "topology.yaml")
@example(b"&a [*a]", "topology.yaml")
@example(b"&a {entities: *a}", "topology.yaml")
@example(b"entities: [{id: a, type: service, tier: 1" + b"1" * 5000 + b"}]", "topology.yaml")
def test_topology_files_load_or_refuse(content, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            Topology.load(path)
        except TopologyError as exc:
            assert str(exc).startswith(f"{path}:"), exc  # file:line:column: when the place is known
