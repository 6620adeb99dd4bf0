"""How a decision record is sealed and read back: its canonical JSON, its hash in the chain, the row
it is stored as."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date, datetime, time, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from ..models import DecisionRecord

GENESIS = "0" * 64
PURGED_KIND = "retention.purged"
JSON_FIELDS = ("inputs", "decision", "reasons", "evidence", "versions")
COLUMNS = ("seq", "at", "incident_id", "kind", "node", *JSON_FIELDS, "prev_hash", "hash")
MOVE_WINDOW = 16  # a record moved up to this many places is reported as reordered


def record_hash(record: DecisionRecord) -> str:
    """The hash ``record`` should carry; lets a consumer of the AUDIT stream check records on its own."""
    return _seal(record.model_dump(mode="json", exclude={"hash"}))


def _seal(fields: dict[str, Any]) -> str:
    return hashlib.sha256((fields["prev_hash"] + _canonical(fields)).encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sealed_seq(row: dict[str, Any]) -> int | None:
    """The seq this row's hash was computed for: its own if intact, a nearby one if moved, None if changed."""
    try:
        fields = {k: v for k, v in _parsed(row).items() if k != "hash"}
        for offset in range(MOVE_WINDOW + 1):
            for seq in {row["seq"] - offset, row["seq"] + offset}:
                if seq > 0 and _seal({**fields, "seq": seq}) == row["hash"]:
                    return seq
    except (TypeError, ValueError):  # unparsable JSON or an unhashable value: edited by hand
        pass
    return None


def _record(row: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord.model_validate(_parsed(row))


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in JSON_FIELDS else v for k, v in row.items()}


def _plain(value: Any) -> Any:
    """Reduce ``value`` to JSON types, so what is hashed is exactly what is stored and read back."""
    return json.loads(json.dumps(value, default=_jsonable, allow_nan=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (date, time, Path, UUID, Decimal)):
        return str(value)  # ISO 8601 for dates and times
    raise TypeError(f"audit values must be JSON-serialisable; got {type(value).__name__}: {value!r:.80}")


def _iso(at: datetime) -> str:
    # Naive times are taken as UTC. The "Z" form is also pydantic's, so record_hash() matches stored hashes.
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    return at.isoformat().replace("+00:00", "Z")


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}–{last}"
