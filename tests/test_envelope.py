"""The event envelope: what is an rtem event, and what each kind of bad input is told."""

import json

import pytest

from bus import InvalidEvent, parse_event
from tests.conftest import cloud_event

GOOD = cloud_event("e1", "cartservice-0", "2022-03-20T00:36:00.000Z", metric="cpu", direction="up")


def test_a_valid_event_parses_with_event_time_in_utc():
    event = parse_event(json.dumps(GOOD).encode())
    assert event.id == "e1" and event.subject == "cartservice-0" and event.severity == "warning"
    assert event.time.isoformat() == "2022-03-20T00:36:00+00:00"
    assert event.attributes == {"metric": "cpu", "direction": "up"}


def test_time_offsets_are_normalised_to_utc():
    event = parse_event(json.dumps({**GOOD, "time": "2022-03-20T02:36:00+02:00"}))
    assert event.time.isoformat() == "2022-03-20T00:36:00+00:00"


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object but a list"),
    (b"\xff\xfe{}", "not valid UTF-8 at byte 0"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "id"}).encode(), "'id' is a required property"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "time"}).encode(), "'time' is a required property"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "subject"}).encode(), "'subject' is a required property"),
    (json.dumps({**GOOD, "data": {**GOOD["data"], "severity": "loud"}}).encode(), "'loud' is not one of"),
    (json.dumps({**GOOD, "time": "yesterday"}).encode(), "is not an RFC 3339 timestamp"),
    (json.dumps({**GOOD, "time": "2022-03-20T00:36:00"}).encode(), "is not an RFC 3339 timestamp"),
    (json.dumps({**GOOD, "specversion": "0.3"}).encode(), "'1.0' was expected"),
])
def test_bad_input_gets_a_clear_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert reason in caught.value.reason


def test_the_event_id_is_kept_when_the_rest_is_invalid():
    with pytest.raises(InvalidEvent) as caught:
        parse_event(json.dumps({**GOOD, "data": {"severity": "loud"}}))
    assert caught.value.event_id == "e1"
    assert "/data/severity" in caught.value.reason


def test_an_oversized_event_is_refused_before_parsing():
    huge = json.dumps({**GOOD, "data": {**GOOD["data"], "message": "x" * (10 * 1024 * 1024)}}).encode()
    with pytest.raises(InvalidEvent, match="over the 1048576-byte limit"):
        parse_event(huge)


def test_v0_events_are_upcast_to_the_current_schema():
    old = {**GOOD, "data": {"level": "warn", "message": "disk almost full"}}
    event = parse_event(json.dumps(old))
    assert event.severity == "warning" and event.message == "disk almost full"


def test_unknown_event_types_are_kept():
    assert parse_event(json.dumps({**GOOD, "type": "com.example.something"})).type == "com.example.something"


def test_the_fast_validator_and_jsonschema_agree():
    from bus._envelope import _fast_validator, _validator, upcast
    import fastjsonschema

    samples = [GOOD, {**GOOD, "id": ""}, {**GOOD, "data": {"severity": "x"}}, {**GOOD, "data": []},
               {**GOOD, "specversion": 1}, {**GOOD, "subject": None}, {**GOOD, "data": {"severity": "info",
               "attributes": []}}, {**GOOD, "data": {"severity": "info", "message": 3}}, {"id": "x"}]
    for doc in samples:
        try:
            _fast_validator()(upcast(doc))
            fast_ok = True
        except fastjsonschema.JsonSchemaException:
            fast_ok = False
        assert fast_ok == _validator().is_valid(upcast(doc)), doc
