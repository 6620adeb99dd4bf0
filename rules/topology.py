"""The system's topology: a typed graph of entities and relations (DESIGN.md §3).

Detection uses it to correlate events into incidents, the guard to compute blast radius, and the
reasoners to follow dependencies. Loading is strict: a relation that names an unknown entity is an
error with the file and the relation's index, not a silently dangling edge.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

EntityType = Literal["service", "instance", "host", "database", "cache", "queue", "external"]
RelationType = Literal["calls", "uses", "instance_of", "runs_on"]


class TopologyError(ValueError):
    pass


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    type: EntityType
    tier: int | None = None
    labels: dict[str, str] = {}


class Relation(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    target: str
    type: RelationType


class Topology(BaseModel):
    """Entities and relations, with the lookups the rest of rtem needs precomputed once."""

    model_config = ConfigDict(frozen=True)

    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read the topology: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TopologyError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:  # ValueError: also a YAML date like 2024-02-30
            raise TopologyError(f"{path}: not valid {kind}: {exc}") from None
        except RecursionError:
            raise TopologyError(f"{path}: not valid {kind}: nested too deeply") from None
        return cls.from_dict(doc or {}, origin=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], origin: str = "<topology>") -> Topology:
        try:
            topology = cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise TopologyError(f"{origin}: {where}: {first['msg']}") from None
        ids = [e.id for e in topology.entities]
        seen: set[str] = set()
        for entity_id in ids:
            if entity_id in seen:
                raise TopologyError(f"{origin}: entity {entity_id!r} is defined twice")
            seen.add(entity_id)
        for index, rel in enumerate(topology.relations):
            for end in (rel.source, rel.target):
                if end not in seen:
                    raise TopologyError(f"{origin}: relations[{index}] names unknown entity {end!r}")
        return topology

    @cached_property
    def digest(self) -> str:
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    @cached_property
    def by_id(self) -> dict[str, Entity]:
        return {e.id: e for e in self.entities}

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self.by_id

    def entity_type(self, entity_id: str) -> str | None:
        entity = self.by_id.get(entity_id)
        return entity.type if entity else None

    @cached_property
    def _out(self) -> dict[str, dict[str, tuple[str, ...]]]:
        return _index(self.relations, lambda r: (r.source, r.target))

    @cached_property
    def _in(self) -> dict[str, dict[str, tuple[str, ...]]]:
        return _index(self.relations, lambda r: (r.target, r.source))

    def targets(self, entity_id: str, relation: RelationType) -> tuple[str, ...]:
        """Entities this one points to: `targets(x, "calls")` are what x calls."""
        return self._out.get(entity_id, {}).get(relation, ())

    def sources(self, entity_id: str, relation: RelationType) -> tuple[str, ...]:
        """Entities pointing to this one: `sources(s, "instance_of")` are the instances of service s."""
        return self._in.get(entity_id, {}).get(relation, ())

    def neighbours(self, entity_id: str) -> set[str]:
        """Every entity one relation away, in either direction and of any type."""
        found: set[str] = set()
        for table in (self._out, self._in):
            for ends in table.get(entity_id, {}).values():
                found.update(ends)
        return found

    def service_of(self, entity_id: str) -> str:
        """The service an instance belongs to; any other entity stands for itself."""
        owners = self.targets(entity_id, "instance_of")
        return owners[0] if owners else entity_id

    def host_of(self, entity_id: str) -> str | None:
        hosts = self.targets(entity_id, "runs_on")
        return hosts[0] if hosts else None

    def instances(self, service_id: str) -> tuple[str, ...]:
        return self.sources(service_id, "instance_of")

    def blast_radius(self, entity_ids: Iterable[str]) -> set[str]:
        """The given entities and those one topology relation away from them (DESIGN.md §4)."""
        radius: set[str] = set()
        for entity_id in entity_ids:
            radius.add(entity_id)
            radius.update(self.neighbours(entity_id))
        return radius

    def matches(self, candidate: str, truth: str) -> bool:
        """True when `candidate` names `truth` or, for a service-level truth, one of its instances."""
        return candidate == truth or self.service_of(candidate) == truth


def _index(relations: Iterable[Relation], ends) -> dict[str, dict[str, tuple[str, ...]]]:
    table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rel in relations:
        start, end = ends(rel)
        table[start][rel.type].append(end)
    return {k: {t: tuple(v) for t, v in inner.items()} for k, inner in table.items()}
