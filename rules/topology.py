"""The system's topology: a typed graph of entities and relations (DESIGN.md §3).

Detection uses it to correlate events into incidents, the guard to compute blast radius, and the
reasoners to follow dependencies. Loading is strict, because a topology that silently loses part of
itself misleads all three: a document of the wrong shape (`{"nodes": …}`, an entity without `type`,
a relation naming an unknown entity, a duplicate) is a `TopologyError` at its file:line:column, with
what to do. JSON files are read as JSON; their lines come from reading the same text as YAML, only
when there is an error to place.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from bus import Event

from ._files import RulesError, node_marks, read_rule_file

EntityType = Literal["service", "instance", "host", "database", "cache", "queue", "external"]
RelationType = Literal["calls", "uses", "instance_of", "runs_on"]
ENTITY_TYPES: tuple[str, ...] = get_args(EntityType)
RELATION_TYPES: tuple[str, ...] = get_args(RelationType)
SHAPE = "a topology is a mapping with `entities` (each with id and type) and `relations` (source, target, type)"
# Names other graph formats use for ours: the hint says which of ours is meant.
_SYNONYMS = {"nodes": "entities", "vertices": "entities", "services": "entities", "edges": "relations",
             "links": "relations", "dependencies": "relations"}

Locate = Callable[[Sequence[str | int]], "tuple[int, int] | None"]
# The attributes in which an event says which host its subject runs on: OpenTelemetry's resource attribute
# (DESIGN.md §3 prefers its names) and Kubernetes' node name, as collectors label container metrics.
HOST_ATTRIBUTES = ("host.name", "k8s.node.name")
# The attributes in which an event says which service its subject is an instance of: OpenTelemetry's, then
# the Kubernetes workload that owns a pod (as the collector's k8s attributes processor adds them), in order.
SERVICE_ATTRIBUTES = ("service.name", "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name")
# Events whose attributes describe a call (caller, callee), not their subject.
TRACE_TYPE = "rtem.trace.anomaly"
# The entity types an instance can belong to (`instance_of`): a service or a data store.
OWNER_TYPES = ("service", "database", "cache", "queue")


class TopologyError(ValueError):
    """A topology that cannot be used: where (file, and line:column when known), why, what to do."""

    def __init__(self, file: str | Path, reason: str, hint: str = "", line: int | None = None,
                 column: int | None = None):
        self.file, self.reason, self.hint, self.line, self.column = str(file), reason, hint, line, column
        where = f"{self.file}:{line}:{column or 1}" if line else self.file
        super().__init__(f"{where}: {reason}" + (f" ({hint})" if hint else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "reason": self.reason, "hint": self.hint}


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # owner, replica_of, …: read by rules and the demo

    id: str
    type: EntityType
    tier: int | None = None
    labels: dict[str, str] = {}


class Relation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str
    type: RelationType


class Topology(BaseModel):
    """Entities and relations, with the lookups the rest of rtem needs precomputed once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        """Read a JSON (`.json`) or YAML file; TopologyError at the file:line:column of the first problem."""
        path = Path(path)
        doc, locate = read_topology_file(path)
        return cls.from_dict(doc, origin=str(path), locate=locate)

    @classmethod
    def from_dict(cls, doc: Any, origin: str = "<topology>", locate: Locate | None = None) -> Topology:
        """Build a topology from a parsed document; `locate(path)` gives the (line, column) of a path in
        it, when the document came from a file."""
        def error(at: Sequence[str | int], reason: str, hint: str = "") -> TopologyError:
            line, column = (locate(at) if locate else None) or (None, None)
            return TopologyError(origin, reason, hint, line, column)

        if not isinstance(doc, dict):
            raise error((), f"the document is {_kind(doc)}, not a mapping", SHAPE)
        for key in doc:
            if key not in cls.model_fields:
                ours = _SYNONYMS.get(str(key).lower())
                raise error((key,), f"unknown key {key!r}", f"did you mean `{ours}`? {SHAPE}" if ours else SHAPE)
        try:
            topology = cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise error(first["loc"], *_explain(first)) from None
        seen: dict[str, int] = {}
        for index, entity in enumerate(topology.entities):
            if not entity.id.strip():
                raise error(("entities", index, "id"), f"entities[{index}] has an empty id", "give it a unique name")
            if entity.id in seen:
                raise error(("entities", index, "id"), f"entity {entity.id!r} is defined twice (first at "
                            f"entities[{seen[entity.id]}])", "keep one definition, or rename one of them")
            seen[entity.id] = index
        relations: dict[tuple[str, str, str], int] = {}
        for index, rel in enumerate(topology.relations):
            for end in ("source", "target"):
                if getattr(rel, end) not in seen:
                    raise error(("relations", index, end), f"relations[{index}] names unknown entity "
                                f"{getattr(rel, end)!r}", "add it to `entities`, or correct the name")
            key = (rel.source, rel.type, rel.target)
            if key in relations:
                raise error(("relations", index), f"relations[{index}] repeats relations[{relations[key]}] "
                            f"({rel.source} {rel.type} {rel.target})", "remove one of them")
            relations[key] = index
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

    def with_described(self, events: Iterable[Event]) -> Topology:
        """This topology with the instances it lacks that their events describe: an event about an entity it
        does not hold whose `service.name` (else its Kubernetes workload: `SERVICE_ATTRIBUTES`) names a
        service (or data store) it holds says that the entity is an instance of it, as a pod scaled out or
        renamed by a rollout since the topology was written (`described_by`). Where it runs is then the
        events' word too (`host_said`). Traces describe nothing: their attributes are the call's."""
        return self.with_instances(described_by(events, self))

    def with_instances(self, owners: Mapping[str, str]) -> Topology:
        """This topology with each entity of `owners` (entity → its service, as `described_by` reads them) as
        an instance of it; this very topology when there are none."""
        if not owners:
            return self
        # A new model, not model_copy: a copy would keep this one's cached lookups (`_out`, `digest` …).
        return Topology(entities=self.entities + tuple(Entity(id=e, type="instance") for e in owners),
                        relations=self.relations + tuple(Relation(source=e, target=s, type="instance_of")
                                                         for e, s in owners.items()))

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


def host_said(event: Event, topology: Topology) -> str | None:
    """The host an event says its subject runs on (`HOST_ATTRIBUTES`), when the topology holds both, the
    named host as a host. A host's own events and those of a service with instances place nothing: such a
    service runs wherever its instances do, and a host named on it is the collector's. Nor do traces:
    their attributes are the call's, and a span's host is its caller's."""
    host = next((str(event.attributes[a]) for a in HOST_ATTRIBUTES if event.attributes.get(a)), None)
    if host is None or event.type == TRACE_TYPE or topology.entity_type(host) != "host":
        return None
    placeable = event.subject in topology and topology.entity_type(event.subject) != "host"
    return host if placeable and not topology.instances(event.subject) else None


def described_by(events: Iterable[Event], topology: Topology) -> dict[str, str]:
    """Entity → the service (or data store) its events say it is an instance of (the first of
    `SERVICE_ATTRIBUTES` an event has), for subjects the topology does not hold; the first event that says
    counts."""
    owners: dict[str, str] = {}
    for event in events:
        owner = next((event.attributes[a] for a in SERVICE_ATTRIBUTES if event.attributes.get(a)), None)
        if (not owner or event.type == TRACE_TYPE or event.subject in topology or event.subject in owners
                or topology.entity_type(str(owner)) not in OWNER_TYPES):
            continue
        owners[event.subject] = str(owner)
    return dict(sorted(owners.items()))


def residency_said(events: Iterable[Event], topology: Topology) -> dict[str, str]:
    """Entity → the host its events say it runs on (`host_said`); where they disagree, the latest says
    where it runs now (a rescheduled container)."""
    said: dict[str, tuple[float, str]] = {}
    for event in events:
        host = host_said(event, topology)
        if host is not None and (event.subject not in said or event.ts >= said[event.subject][0]):
            said[event.subject] = (event.ts, host)
    return {entity: host for entity, (_, host) in sorted(said.items())}


def read_topology_file(path: Path) -> tuple[Any, Locate]:
    """The parsed document of a topology file and where each path inside it is (line, column)."""
    if path.suffix.lower() != ".json":
        try:
            parsed = read_rule_file(path)
        except RulesError as exc:
            raise TopologyError(path, exc.reason.replace("cannot read the file", "cannot read the topology"),
                                exc.hint, exc.line, exc.column) from None
        if parsed.doc is None:
            raise TopologyError(path, "the file is empty", SHAPE, 1, 1)
        return parsed.doc, parsed.locate
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise TopologyError(path, f"cannot read the topology: {exc.strerror}", "check the path") from None
    except UnicodeDecodeError as exc:
        raise TopologyError(path, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(path, f"not valid JSON: {exc.msg}", "", exc.lineno, exc.colno) from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits; [[[[…
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise TopologyError(path, f"not valid JSON: {reason}") from None
    return doc, _json_locator(text, path)


def _json_locator(text: str, path: Path) -> Locate:
    """Lines for a JSON document, found only when an error needs one: JSON is YAML, once its tabs (which
    JSON allows only between tokens, where a space means the same) are spaces."""
    def locate(at: Sequence[str | int]) -> tuple[int, int] | None:
        try:
            node = yaml.compose(text.replace("\t", " "), Loader=yaml.SafeLoader)
            marks = node_marks(node, path) if node is not None else {}
        except Exception:  # a place is a courtesy: the error is reported with or without it
            return None
        at = tuple(at)
        while at and at not in marks:
            at = at[:-1]
        return marks.get(at)
    return locate


def _explain(error: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error in the words of the topology format, and what to do about it."""
    loc, kind = error["loc"], error["type"]
    where = _dotted(loc)
    if kind == "missing":
        return f"{_dotted(loc[:-1])}: `{loc[-1]}` is missing", f"{SHAPE}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field", "a relation has source, target and type"
    if kind == "literal_error" and loc[-1] == "type":
        allowed = RELATION_TYPES if loc[0] == "relations" else ENTITY_TYPES
        return f"{where}: {error['input']!r} is not a known type", f"one of {', '.join(allowed)}"
    if kind in ("tuple_type", "list_type"):
        return f"{where}: should be a list", SHAPE
    return f"{where}: {error['msg']}", ""


def _dotted(loc: Sequence[str | int]) -> str:
    """('entities', 3, 'type') → entities[3].type"""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the document"


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def _index(relations: Iterable[Relation], ends) -> dict[str, dict[str, tuple[str, ...]]]:
    table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rel in relations:
        start, end = ends(rel)
        table[start][rel.type].append(end)
    return {k: {t: tuple(v) for t, v in inner.items()} for k, inner in table.items()}
