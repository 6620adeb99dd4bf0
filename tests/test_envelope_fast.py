"""The envelope's hot path (bus/_fast.py: orjson and a check for the common v1 shape) gives what the full
path (`json.loads` and the schema) gives: the same Event, or the same refusal with the same reason.

The full path is the reference: `parse_event` falls back to it whenever the shortcut cannot promise the
same answer, so these tests check both that the shortcut never answers differently and that it does
answer (is taken) for the events rtem sees every day, not only that the fallback works.
Examples per property: 200, or RTEM_FUZZ_EXAMPLES (docs/testing.md, "Fuzzing").
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from bus import Event, InvalidEvent, event_from_dict, parse_event
from bus import _fast
from bus._envelope import (MAX_JSON_DEPTH, _common_v1, _event_from_dict_full, _new_event, _parse_event_full,
                           _validator, loads_json, upcast)

EXAMPLES = int(os.environ.get("RTEM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(parse, raw) -> tuple:
    """What a parser made of `raw`, comparable exactly: repr tells 1 from 1.0 from True, and -0.0 from 0.0,
    which == on dicts does not."""
    try:
        event = parse(raw)
    except InvalidEvent as exc:
        return ("refused", exc.reason, exc.event_id)
    return ("event", type(event), repr(event.__dict__), list(event.__dict__), event.model_fields_set,
            event.__pydantic_extra__, event.__pydantic_private__)


def fast_path_taken(raw: bytes | str) -> bool:
    doc = _fast.decode(raw, MAX_JSON_DEPTH)
    return doc is not None and _common_v1()(doc)


# -- strategies: the v1 shape at and around its bounds ------------------------------------------------------

def sized(low: int, high: int) -> st.SearchStrategy[str]:
    """Strings at the schema's bounds (code points, some outside the BMP) and in between."""
    lengths = st.sampled_from(sorted({max(low - 1, 0), low, low + 1, high - 1, high, high + 1})) | st.integers(0, 40)
    chars = st.sampled_from(["a", "é", "😀", "\x00", "\\", '"', "z"])
    return lengths.flatmap(lambda n: chars.map(lambda c: c * n))


text = st.text(max_size=16)
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, 1700000000000000000, 1e19, -0.0, 9.3e18])
json_values = st.recursive(st.none() | st.booleans() | numbers | text,
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3),
                           max_leaves=10)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets).map(
        lambda t: t.isoformat()),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["2022-03-20T00:36:00z", "2022-03-20T00:36:00", "yesterday", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2022-03-20T00:36:00.000Z" + " " * 40, ""]),
    # fromisoformat reads any number of fraction digits: valid times on both sides of the 64-character bound
    st.integers(1, 50).map(lambda n: "2022-03-20T00:36:00." + "1" * n + "Z"),
    text)


def either(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a value of the right kind, sometimes any JSON value in its place."""
    return st.one_of(valid, valid, valid, json_values)


current = st.fixed_dictionaries({
    "specversion": st.just("1.0"), "id": sized(1, 256).filter(lambda s: 1 <= len(s) <= 256),
    "source": st.text(min_size=1, max_size=40), "type": st.text(min_size=1, max_size=40),
    "time": st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets).map(
        lambda t: t.isoformat()),
    "subject": st.text(min_size=1, max_size=40),
    "data": st.fixed_dictionaries({"severity": st.sampled_from(["info", "warning", "error", "critical"])},
                                  optional={"message": st.text(max_size=40), "attributes": st.dictionaries(
                                      text, st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                                                         | st.floats(-1e18, 1e18) | text,
                                                         lambda kids: st.lists(kids, max_size=3)
                                                         | st.dictionaries(text, kids, max_size=3), max_leaves=8),
                                      max_size=4)})},
    optional={"datacontenttype": text, "dataschema": text})

# One part of a valid current event replaced (or removed): where a shortcut's check would drift from the
# schema, at a length bound, a type, an enum value.
_GONE = object()
ENVELOPE_PARTS = {
    "specversion": st.sampled_from(["1.0", "0.3", "1.0 ", "", "1.00"]), "id": sized(1, 256),
    "source": sized(1, 1024), "type": sized(1, 256), "time": times, "subject": sized(1, 256),
    "datacontenttype": text, "dataschema": text, "extension": json_values,
}
DATA_PARTS = {
    "severity": st.sampled_from(["info", "warning", "error", "critical", "INFO", "fatal", "warn"]),
    "level": st.sampled_from(["warn", "crit", "debug", "loud"]), "message": sized(0, 65536),
    "attributes": st.dictionaries(text, json_values, max_size=4), "extra": json_values,
}


def one_part_changed(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    def change(where: str, key: str, value: Any) -> dict[str, Any]:
        changed = {**doc, "data": {**doc["data"]}}
        target = changed["data"] if where == "data" else changed
        if value is _GONE:
            target.pop(key, None)
        else:
            target[key] = value
        return changed

    parts = [("doc", key, kind) for key, kind in ENVELOPE_PARTS.items()] + [
        ("data", key, kind) for key, kind in DATA_PARTS.items()] + [("doc", "data", json_values)]
    return st.sampled_from(parts).flatmap(lambda part: st.one_of(part[2], part[2], json_values, st.just(_GONE)).map(
        lambda value: change(part[0], part[1], value)))


envelopes = st.one_of(
    st.fixed_dictionaries({}, optional={**{key: either(kind) for key, kind in ENVELOPE_PARTS.items()},
                                        "data": either(st.fixed_dictionaries({}, optional={
                                            key: either(kind) for key, kind in DATA_PARTS.items()}))}),
    current.flatmap(one_part_changed), current.flatmap(one_part_changed))

GOOD = {"specversion": "1.0", "id": "e1", "source": "/t", "type": "rtem.metric.anomaly",
        "time": "2022-03-20T00:36:00.000Z", "subject": "cartservice-0",
        "data": {"severity": "warning", "message": "cpu up", "attributes": {"metric": "cpu", "value": 0.93}}}
GOOD_TEXT = json.dumps(GOOD)


def spliced(value: str) -> bytes:
    """GOOD with raw JSON text `value` as an attribute: for what json.dumps cannot write."""
    return GOOD_TEXT.replace('"value": 0.93', f'"value": {value}').encode()


def encodings(doc: dict[str, Any]) -> st.SearchStrategy[bytes | str]:
    """`doc` as the bus carries it (bytes, ASCII-escaped or not), as text, and with its bytes damaged."""
    ascii_ = json.dumps(doc).encode()
    utf8 = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return st.one_of(
        st.just(ascii_), st.just(utf8), st.just(utf8.decode("utf-8", "surrogateescape")),
        st.tuples(st.integers(0, len(utf8)), st.binary(min_size=1, max_size=4)).map(
            lambda cut: utf8[:cut[0]] + cut[1] + utf8[cut[0]:]),
        st.integers(0, max(len(utf8) - 1, 0)).map(lambda at: utf8[:at] + utf8[at + 1:]))


# -- properties ---------------------------------------------------------------------------------------------

@FUZZ
@given(envelopes.flatmap(encodings))
@example(GOOD_TEXT.encode())
@example(GOOD_TEXT)
@example(spliced("NaN"))
@example(spliced("-Infinity"))
@example(spliced("1e999"))
@example(spliced("1" * 5000))
@example(spliced(str(2**64)))             # orjson: a float; json: an exact int
@example(spliced(str(-(2**63) - 1)))
@example(spliced(str(2**64 - 1)))         # still exact in orjson
@example(spliced("1700000000000000000"))  # a nanosecond clock
@example(spliced("12345678901234567890123.0"))
@example(spliced('"\\ud800"'))            # a lone surrogate, escaped
@example(spliced('"\\ud83d\\ude00"'))     # a pair: fine
@example(GOOD_TEXT.encode().replace(b"cpu up", b"cpu \xed\xa0\x80 up"))  # a raw surrogate: not UTF-8
@example(GOOD_TEXT.encode().replace(b"cpu up", b"cpu \xff up"))
@example(b"\xef\xbb\xbf" + GOOD_TEXT.encode())  # a BOM
@example(spliced("[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3)))
@example(spliced("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH))
@example(spliced("[" * 2000 + "]" * 2000))
@example(GOOD_TEXT.replace('"id": "e1"', '"id": "e1", "id": "e2"').encode())  # duplicates: the last one
@example(GOOD_TEXT.replace('"id": "e1"', '"id": 3, "id": "e2"').encode())
@example(GOOD_TEXT.replace('"id": "e1"', '"id": "e2", "id": ""').encode())
@example(GOOD_TEXT.replace('"severity": "warning"', '"severity": "warning", "severity": "x"').encode())
@example(GOOD_TEXT.replace("cpu up", "\x01").encode())
@example(GOOD_TEXT.replace("cpu up", "\\u0000").encode())
@example(json.dumps({**GOOD, "time": "2022-03-20T00:36:00." + "1" * 44 + "Z"}).encode())  # 65 characters
@example(json.dumps({**GOOD, "data": {**GOOD["data"], "message": "😀" * 65537}}).encode())
@example(json.dumps({**GOOD, "id": "😀" * 257}, ensure_ascii=False).encode())
@example(b"[1, 2]")
@example(b"")
@example(b'"text"')
def test_the_fast_path_and_the_full_path_agree_on_bytes(raw):
    note(repr(raw))
    assert outcome(parse_event, raw) == outcome(_parse_event_full, raw)


@FUZZ
@given(envelopes)
@example({**GOOD, "data": {**GOOD["data"], "attributes": {"n": 2**70}}})  # an exact int, as the API gives it
@example({**GOOD, "data": {**GOOD["data"], "attributes": {"n": 1e300}}})
@example({**GOOD, "data": {"level": "warn"}})
def test_the_fast_path_and_the_full_path_agree_on_decoded_documents(doc):
    """`event_from_dict` (the HTTP ingest's door) against its full path, on what loads_json returns."""
    note(repr(doc))
    doc = loads_json(json.dumps(doc))
    assert outcome(event_from_dict, doc) == outcome(_event_from_dict_full, doc)


@FUZZ
@given(envelopes)
def test_the_shape_check_accepts_exactly_what_the_schema_accepts_for_the_current_shape(doc):
    check, schema = _common_v1(), _validator()
    valid = schema.is_valid(upcast(doc))
    if check(doc):
        assert valid, doc  # never a pass the schema would refuse
    elif isinstance(doc.get("data"), dict) and "severity" in doc["data"] and _fast._exact_numbers(
            doc["data"].get("attributes") if isinstance(doc["data"].get("attributes"), dict) else {}):
        assert not valid, doc  # and no refusal of the current shape it could have passed


@FUZZ
@given(current.flatmap(lambda doc: st.tuples(st.just(doc), st.booleans())))
def test_current_events_take_the_fast_path(case):
    """Not just a fallback that always runs: every valid current-shape event is decided by the shortcut."""
    doc, ascii_ = case
    raw = json.dumps(doc, ensure_ascii=ascii_).encode()
    assert fast_path_taken(raw), raw
    assert outcome(parse_event, raw) == outcome(_parse_event_full, raw)


@FUZZ
@given(st.tuples(text, text, text, st.datetimes(timezones=st.just(timezone.utc)), text,
                 st.sampled_from(["info", "critical"]), text, st.dictionaries(text, json_values, max_size=3)))
def test_the_direct_construction_is_model_construct(fields):
    """`_new_event` builds what `Event.model_construct` built before it: type, fields, fields set, and
    pydantic's own view of it (equality, dump, copy, the cached `ts`)."""
    names = ("id", "source", "type", "time", "subject", "severity", "message", "attributes")
    ours, theirs = _new_event(*fields), Event.model_construct(**dict(zip(names, fields)))
    assert outcome(lambda _: ours, None) == outcome(lambda _: theirs, None)
    assert ours == theirs and ours.model_dump() == theirs.model_dump() and repr(ours) == repr(theirs)
    assert ours.model_copy(update={"id": "x"}).id == "x" and ours.id == fields[0]
    assert ours.ts == theirs.ts


# -- examples a reader can follow ---------------------------------------------------------------------------

def test_a_typical_event_takes_the_fast_path_and_reads_as_before():
    assert fast_path_taken(GOOD_TEXT.encode())
    event = parse_event(GOOD_TEXT.encode())
    assert isinstance(event, Event) and event.id == "e1" and event.attributes == {"metric": "cpu", "value": 0.93}
    assert event.time == datetime(2022, 3, 20, 0, 36, tzinfo=timezone.utc)


def test_an_integer_past_64_bits_goes_the_full_way_and_stays_exact():
    raw = spliced(str(2**64 + 1))
    assert not fast_path_taken(raw)
    assert parse_event(raw).attributes["value"] == 2**64 + 1


def test_a_refusal_keeps_the_full_paths_reason():
    doc = {**GOOD, "data": {**GOOD["data"], "severity": "loud"}}
    assert not _common_v1()(doc)
    try:
        parse_event(json.dumps(doc).encode())
    except InvalidEvent as exc:
        assert exc.reason.startswith("schema v1: 'loud' is not one of") and exc.reason.endswith("at /data/severity")
        assert exc.event_id == "e1"
    else:
        raise AssertionError("a severity outside the enum was accepted")
