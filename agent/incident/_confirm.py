"""Confirmed causes: what a person says really caused an incident, checked and read back, pure.

A confirmation is a `cause.confirmed` decision record; nothing else holds it. It can be corrected by
confirming again: every record is kept and the latest counts. `confirmed_cause(records, as_of=T)` reads
the cause as it stood at time T (the latest confirmation made at or before T), which is what anything that
learns from confirmations must use, so that an incident is never judged with what was confirmed after it.

`check_cause` refuses a cause that names no entity rtem knows of (the topology's, or the incident's own and
its ranked causes'), listing candidates, since a mistyped entity would teach nothing and match nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

CONFIRMED = "cause.confirmed"
MAX_LISTED = 20  # candidates named in a refusal: enough to spot a typo, short enough to read


class ConfirmRefusal(StrEnum):
    NO_SUCH_INCIDENT = "no_such_incident"
    MERGED = "merged"  # it lives on in the incident that absorbed it: confirm that one
    UNKNOWN_ENTITY = "unknown_entity"

    @property
    def http_status(self) -> int:
        return {ConfirmRefusal.NO_SUCH_INCIDENT: 404, ConfirmRefusal.MERGED: 409}.get(self, 422)


class ConfirmRefused(Exception):
    """A confirmation that was not kept, and why; `kind` tells the surface how to answer."""

    def __init__(self, kind: ConfirmRefusal, message: str, detail: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail or {}


@dataclass(frozen=True)
class ConfirmedCause:
    """One incident's confirmed cause as a record states it, and how rtem's ranking compared."""

    incident_id: str
    entity: str
    fault_type: str | None
    note: str
    by: str
    at: datetime
    seq: int
    agreed: bool  # rtem's top-ranked cause was this entity (or, for a service, one of its instances)
    ranked_first: str | None
    rank: int | None  # where rtem ranked it (1 = first), None when it was not ranked at all

    @classmethod
    def from_record(cls, record: Any) -> ConfirmedCause:
        """From a `cause.confirmed` DecisionRecord."""
        d = record.decision
        return cls(incident_id=record.incident_id or "", entity=d["cause"], fault_type=d.get("fault_type"),
                   note=d.get("note") or "", by=d.get("by") or "", at=record.at, seq=record.seq,
                   agreed=bool(d.get("agreed")), ranked_first=d.get("ranked_first"), rank=d.get("rank"))

    def to_dict(self) -> dict[str, Any]:
        return {"incident": self.incident_id, "cause": self.entity, "fault_type": self.fault_type,
                "note": self.note, "by": self.by, "at": self.at.isoformat(), "seq": self.seq,
                "agreed": self.agreed, "ranked_first": self.ranked_first, "rank": self.rank}

    def describe(self) -> str:
        fault = f" ({self.fault_type})" if self.fault_type else ""
        ranked = (f"rtem ranked it #{self.rank}" if self.rank else "rtem did not rank it") + \
            ("" if self.agreed or not self.ranked_first else f", and {self.ranked_first} first")
        return f"{self.entity}{fault}, confirmed by {self.by} at {self.at.isoformat(timespec='seconds')}; {ranked}"


def candidates(incident: dict[str, Any], topology_entities: Iterable[str] = ()) -> list[str]:
    """The entities a cause may name: the topology's, the incident's own, and those it ranked."""
    names = set(topology_entities) | set(incident.get("entities") or ())
    names |= {c["entity"] for c in incident.get("root_causes") or () if c.get("entity")}
    return sorted(names)


def check_cause(cause: str, incident: dict[str, Any], topology_entities: Iterable[str] = ()) -> str:
    """The cause, stripped, if it names a candidate; ConfirmRefused listing candidates otherwise."""
    cause = cause.strip()
    known = candidates(incident, topology_entities)
    if cause in known:
        return cause
    # Near names first (same prefix), so the list points at the likely typo.
    near = sorted(known, key=lambda n: (not n.startswith(cause[:4]) if cause else True, n))[:MAX_LISTED]
    listed = ", ".join(near) + (f", … ({len(known)} in all)" if len(known) > len(near) else "")
    reason = (f"{cause!r} is not an entity of the topology or of incident {incident['id']}" if cause
              else "the cause is empty")
    raise ConfirmRefused(ConfirmRefusal.UNKNOWN_ENTITY, f"{reason}; name one of: {listed or 'none known'}",
                         {"cause": cause, "candidates": near})


def rank_of(cause: str, ranked: Sequence[str], service_of: Any = None) -> int | None:
    """Where `cause` stands in rtem's ranking (1-based): the entity itself, or for a service its first
    ranked instance (`service_of(entity)` maps an instance to its service, when a topology is known)."""
    for rank, entity in enumerate(ranked, 1):
        if entity == cause or (service_of is not None and service_of(entity) == cause):
            return rank
    return None


def confirmation(incident: dict[str, Any], cause: str, *, fault_type: str | None, note: str, by: str,
                 service_of: Any = None, previous: ConfirmedCause | None = None) -> dict[str, Any]:
    """The `decision` of a `cause.confirmed` record: the cause, who, and how rtem's ranking compared."""
    ranked = [c["entity"] for c in incident.get("root_causes") or () if c.get("entity")]
    rank = rank_of(cause, ranked, service_of)
    return {"cause": cause, "fault_type": fault_type or None, "note": note, "by": by, "agreed": rank == 1,
            "ranked_first": ranked[0] if ranked else None, "rank": rank,
            "corrects": previous.seq if previous else None}


def confirmed_cause(records: Iterable[Any], as_of: datetime | None = None) -> ConfirmedCause | None:
    """One incident's confirmed cause as of `as_of` (None: now): the latest `cause.confirmed` record made
    at or before it, in seq order; None when none was."""
    latest = None
    for record in records:
        if record.kind == CONFIRMED and (as_of is None or record.at <= as_of):
            if latest is None or record.seq > latest.seq:
                latest = record
    return ConfirmedCause.from_record(latest) if latest is not None else None


def confirmed_causes(records: Iterable[Any], as_of: datetime | None = None) -> dict[str, ConfirmedCause]:
    """Every incident's confirmed cause as of `as_of`, by incident id, from records of any incidents."""
    by_incident: dict[str, list[Any]] = {}
    for record in records:
        if record.kind == CONFIRMED and record.incident_id:
            by_incident.setdefault(record.incident_id, []).append(record)
    found = {incident: confirmed_cause(kept, as_of) for incident, kept in by_incident.items()}
    return {incident: cause for incident, cause in found.items() if cause is not None}
