"""The envelope's shortcut for the common event: orjson instead of `json.loads`, and a few type and length
checks instead of the schema. It only ever says "this is exactly what the full path would return" or "don't
know" (None / False); on "don't know" `parse_event` takes the full path, so what is refused, and the reason
a person is given (and the DLQ keeps), come from the full path unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

# orjson reads an integer outside [-2**63, 2**64 - 1] as a float, where `json.loads` keeps it exact. Such a
# float is at least this large; one in the attributes (the only free-form values an Event keeps) sends the
# event the full way. A regex over the bytes for long digit runs costs ten times the walk.
_PAST_64_BITS = 2.0**63


def decode(raw: bytes | str, max_depth: int) -> dict[str, Any] | None:
    """The JSON object in `raw` as orjson reads it; None when orjson fails or the text may nest deeper
    than `max_depth`. It equals what `loads_json` returns except that integers past 64 bits are floats,
    which the check below looks for where it matters.

    Elsewhere orjson refuses where `loads_json` does (NaN, Infinity, 1e999, lone surrogates, invalid
    UTF-8, a BOM, control characters), and both keep the last of duplicate keys."""
    # `{` and `[` inside strings count too: a few events go the full way for nothing, none nest too deep.
    opening = raw.count(b"{") + raw.count(b"[") if isinstance(raw, bytes) else raw.count("{") + raw.count("[")
    if opening > max_depth:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:  # the full path finds the same fault and words it as rtem always has
        return None
    return doc if type(doc) is dict else None


def common_v1_check(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """A check that says True only for documents `schema` (event v1) accepts, and does so for every v1
    document that has `data.severity` (the current shape, needing no upcast) and no float past 2**63 in
    its attributes. Its length bounds are read from the schema, so the two cannot drift; its structure is
    the schema's as of v1, which tests/test_envelope_fast.py holds it to."""
    props = schema["properties"]
    data_props = props["data"]["properties"]
    severities = frozenset(data_props["severity"]["enum"])
    specversion = props["specversion"]["const"]
    id_min, id_max = _bounds(props["id"])
    source_min, source_max = _bounds(props["source"])
    type_min, type_max = _bounds(props["type"])
    _, time_max = _bounds(props["time"])
    subject_min, subject_max = _bounds(props["subject"])
    _, message_max = _bounds(data_props["message"])

    def check(doc: dict[str, Any]) -> bool:
        # `type(x) is str` rather than isinstance: JSON gives exact types, and anything unusual goes the
        # full way. A missing key reads as None, which no check passes.
        get = doc.get
        value = get("specversion")
        if type(value) is not str or value != specversion:
            return False
        value = get("id")
        if type(value) is not str or not id_min <= len(value) <= id_max:
            return False
        value = get("source")
        if type(value) is not str or not source_min <= len(value) <= source_max:
            return False
        value = get("type")
        if type(value) is not str or not type_min <= len(value) <= type_max:
            return False
        value = get("time")
        if type(value) is not str or len(value) > time_max:
            return False
        value = get("subject")
        if type(value) is not str or not subject_min <= len(value) <= subject_max:
            return False
        if "datacontenttype" in doc and type(doc["datacontenttype"]) is not str:
            return False
        if "dataschema" in doc and type(doc["dataschema"]) is not str:
            return False
        data = get("data")
        if type(data) is not dict:
            return False
        value = data.get("severity")
        if type(value) is not str or value not in severities:
            return False
        if "message" in data:
            value = data["message"]
            if type(value) is not str or len(value) > message_max:
                return False
        if "attributes" not in data:
            return True
        value = data["attributes"]
        return type(value) is dict and _exact_numbers(value)

    return check


def _exact_numbers(attributes: dict[str, Any]) -> bool:
    """Whether no float in `attributes` is large enough to be an integer orjson could not keep exact."""
    stack: list[dict[str, Any] | list[Any]] = [attributes]
    while stack:
        container = stack.pop()
        for value in container.values() if type(container) is dict else container:
            kind = type(value)
            if kind is float:
                if not -_PAST_64_BITS < value < _PAST_64_BITS:
                    return False
            elif kind is dict or kind is list:
                stack.append(value)
    return True


def _bounds(prop: dict[str, Any]) -> tuple[int, float]:
    return prop.get("minLength", 0), prop.get("maxLength", float("inf"))
