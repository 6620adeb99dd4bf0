"""Detection rules: matches, thresholds, sequences and absences in event time, and rule-file errors."""

import textwrap

import pytest

from bus._envelope import event_from_dict
from rules import Detector, RulesError, Topology, load_detections, says_failure
from tests.conftest import cloud_event

TOPOLOGY = Topology.from_dict({
    "entities": [{"id": "api", "type": "service"}, {"id": "api-0", "type": "instance"},
                 {"id": "db", "type": "database"}, {"id": "node-1", "type": "host"}],
    "relations": [{"source": "api", "target": "db", "type": "uses"},
                  {"source": "api-0", "target": "api", "type": "instance_of"},
                  {"source": "api-0", "target": "node-1", "type": "runs_on"}],
})


def ev(event_id, subject, seconds, **kw):
    minutes, secs = divmod(seconds, 60)
    return event_from_dict(cloud_event(event_id, subject, f"2024-01-01T10:{minutes:02d}:{secs:02d}Z", **kw))


def detector(tmp_path, text):
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(text))
    return Detector(load_detections(tmp_path), TOPOLOGY)


def test_every_matching_rule_fires_on_one_event():
    det = Detector(load_detections(), TOPOLOGY)
    signals = det.observe(ev("e1", "api-0", 0, severity="error"))
    assert {s.rule for s in signals} == {"metric-anomaly", "error-event"}


def test_info_events_are_not_signals():
    det = Detector(load_detections(), TOPOLOGY)
    assert det.observe(ev("e1", "api-0", 0, severity="info")) == []


@pytest.mark.parametrize("severity,message,rules", [
    ("info", "login failed for user bob", {"log-says-failure"}),
    ("warning", "open /data/keys: permission denied", {"log-says-failure"}),
    ("info", "java.lang.NullPointerException at Cart.add", {"log-says-failure"}),
    ("warning", "container_fs_reads anomaly", {"log-says-failure"}),
    ("info", "request served in 12 ms", set()),
    ("warning", "slow request", set()),
    ("error", "login failed", {"error-event"}),  # one signal for one error line, not two
    # structured lines are read by their message, error and level fields, not their field names
    ("info", '{"level":"info","msg":"request served","error":null,"caller":"api/errors.go:12"}', set()),
    ("info", "level=info msg=\"request served\" errors=0", set()),
    ("info", '{"level":"error","msg":"payment declined"}', {"log-says-failure"}),
    ("info", 'ts=2024-01-01T10:00:00Z level=info msg="login failed" user=bob', {"log-says-failure"}),
])
def test_a_log_line_that_says_it_failed_is_a_signal_whatever_its_level(severity, message, rules):
    det = Detector(load_detections(), TOPOLOGY)
    signals = det.observe(ev("e1", "api-0", 0, type="rtem.log", severity=severity, message=message))
    assert {s.rule for s in signals} == rules
    assert all(s.severity == ("error" if severity == "error" else "warning") for s in signals)
    assert det.fact(ev("e2", "api-0", 0, type="rtem.log", message=message))["says_failure"] is bool(rules)


@pytest.mark.parametrize("text,says", [
    ("ERROR_CODE=17", True), ("java.lang.OutOfMemoryError: Java heap space", True), ("upstream timed out", True),
    ("Failures: 3", True), ("errorless run", False), ("request served", False), ("profile saved", False),
])
def test_says_failure_reads_whole_words(text, says):
    assert says_failure(text) is says


def test_threshold_counts_within_the_event_time_window(tmp_path):
    det = detector(tmp_path, """
        version: 1
        detections:
          - id: burst
            match: {type: rtem.log}
            threshold: {count: 3, window: 60s}
    """)
    spread = [det.observe(ev(f"s{i}", "api-0", i * 40, type="rtem.log")) for i in range(4)]
    assert not any(spread), "three events spread over two minutes are not a burst"
    fired = [det.observe(ev(f"b{i}", "api-0", 600 + i, type="rtem.log")) for i in range(3)]
    assert fired[:2] == [[], []]
    [signal] = fired[2]
    assert signal.rule == "burst" and signal.event_ids == ("b0", "b1", "b2")


def test_threshold_keys_by_subject(tmp_path):
    det = detector(tmp_path, """
        version: 1
        detections:
          - id: burst
            match: {type: rtem.log}
            threshold: {count: 2, window: 60s}
    """)
    assert det.observe(ev("a", "api-0", 0, type="rtem.log")) == []
    assert det.observe(ev("b", "db", 1, type="rtem.log")) == [], "two different subjects are not a burst"


def test_sequence_fires_only_within_its_time_and_on_the_same_service(tmp_path):
    det = detector(tmp_path, """
        version: 1
        detections:
          - id: deploy-then-errors
            sequence:
              first: {type: rtem.change.deploy}
              then: {severity: error}
              within: 5m
            by: service
    """)
    det.observe(ev("d1", "api", 0, type="rtem.change.deploy", severity="info"))
    assert det.observe(ev("x1", "db", 60, severity="error")) == [], "another service's errors do not count"
    [signal] = det.observe(ev("x2", "api-0", 120, severity="error"))
    assert signal.event_ids == ("d1", "x2")
    assert det.observe(ev("x3", "api-0", 400, severity="error")) == [], "too long after the deploy"


def test_absence_fires_once_when_event_time_passes_the_limit(tmp_path):
    det = detector(tmp_path, """
        version: 1
        detections:
          - id: quiet
            absence: {match: {type: rtem.health}, for: 90s}
    """)
    det.observe(ev("h1", "api-0", 0, type="rtem.health", severity="info"))
    assert det.observe(ev("o1", "db", 60, severity="info")) == []
    [signal] = det.observe(ev("o2", "db", 100, severity="info"))
    assert signal.rule == "quiet" and signal.entity == "api-0" and signal.event_ids == ("h1",)
    assert det.observe(ev("o3", "db", 200, severity="info")) == [], "an absence fires once"
    det.observe(ev("h2", "api-0", 210, type="rtem.health", severity="info"))
    assert [s.rule for s in det.observe(ev("o4", "db", 400, severity="info"))] == ["quiet"]


def test_window_state_survives_a_restart(tmp_path):
    text = """
        version: 1
        detections:
          - id: burst
            match: {type: rtem.log}
            threshold: {count: 2, window: 60s}
    """
    first = detector(tmp_path, text)
    first.observe(ev("a", "api-0", 0, type="rtem.log"))
    second = detector(tmp_path, text)
    second.restore(first.state())
    assert [s.rule for s in second.observe(ev("b", "api-0", 10, type="rtem.log"))] == ["burst"]


@pytest.mark.parametrize("body, line, column, reason", [
    ("""
version: 1
detections:
  - id: a
    match: {type: x}
    treshold: {count: 2, window: 1m}
""", 6, 5, "unknown field 'treshold'"),
    ("""
version: 1
detections:
  - id: a
    match:
      severity: {bigger: 3}
""", 6, 18, "unknown operator 'bigger'"),
    ("""
version: 1
detections:
  - id: a
    match: {type: x}
  - id: a
    match: {type: y}
""", 6, 5, "duplicate rule id 'a'"),
    ("""
version: 1
detections:
  - id: a
    match: {type: x
""", 6, 1, "YAML syntax"),
    ("""
version: 1
detections:
  - id: a
    match: {type: x}
    threshold: {count: 2, window: soon}
""", 6, 27, "'soon' is not valid here"),
    ("""
version: 1
detections:
  - id: too-many-alternatives
    match: {subject: {in: [%s]}}
""" % ", ".join(f"svc-{i}" for i in range(201)), 4, 5, "201 alternatives, over the limit of 200"),
])
def test_a_bad_rule_file_is_refused_with_file_line_and_column(tmp_path, body, line, column, reason):
    (tmp_path / "bad.yaml").write_text("\n" + body.lstrip("\n"))
    with pytest.raises(RulesError) as caught:
        load_detections(tmp_path)
    error = caught.value
    assert error.file.endswith("bad.yaml")
    assert reason in error.reason
    assert (error.line, error.column) == (line, column), str(error)
