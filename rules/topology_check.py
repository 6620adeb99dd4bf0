"""What `rtem topology check` and a topology reload say about a topology beyond "it loads".

`check_topology_file` loads a file strictly (rules/topology.py) and, when it loads, counts its
entities and relations by type and lists what is legal but probably not meant, each at its
file:line: an entity with no relation (correlation can place it by time only), an instance that
belongs to nothing, a relation whose kind does not fit the types it joins (an instance belongs to a
service or a data store, things run on hosts), an entity with several `instance_of` or `runs_on`
(only the first is followed).
`events_coverage` is how well a topology covers recorded events (`rtem topology check --events`): the
entities they name that it does not hold (never weighed in a diagnosis, unless their events say which
service they are instances of), the calls their traces show that it does not list (diagnosis reads those
from the traces anyway), and where their `host.name` places an entity the topology places nowhere
(diagnosis reads that too) or elsewhere (the topology wins).
`diff_topologies` is what changed between two topologies, for the audit records of reloads and
discovery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bus import Event

from .topology import Locate, Topology, TopologyError, described_by, read_topology_file, residency_said

# What a relation of each kind may join: (source types, target types); None: any.
_FITS: dict[str, tuple[set[str] | None, set[str] | None]] = {
    "instance_of": ({"instance"}, {"service", "database", "cache", "queue", "external"}),
    "runs_on": ({"instance", "service", "database", "cache", "queue"}, {"host"}),
    "calls": (None, None),
    "uses": (None, None),
}


@dataclass(frozen=True)
class TopologyIssue:
    file: str
    line: int | None
    column: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column or 1}" if self.line else self.file
        return f"{where}: {self.message}" + (f" ({self.hint})" if self.hint else "")


@dataclass
class TopologyCheck:
    """One file's verdict: the topology (None on an error), counts by type, warnings, the error."""

    file: str
    topology: Topology | None = None
    error: TopologyError | None = None
    warnings: list[TopologyIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> dict[str, dict[str, int]]:
        if self.topology is None:
            return {"entities": {}, "relations": {}}
        return {"entities": dict(sorted(Counter(e.type for e in self.topology.entities).items())),
                "relations": dict(sorted(Counter(r.type for r in self.topology.relations).items()))}

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "ok": self.ok, "digest": self.topology.digest if self.topology else None,
                "counts": self.counts(), "warnings": [asdict(w) for w in self.warnings],
                "errors": [self.error.to_dict()] if self.error else []}


def check_topology_file(path: str | Path) -> TopologyCheck:
    path = Path(path)
    try:
        doc, locate = read_topology_file(path)
        topology = Topology.from_dict(doc, origin=str(path), locate=locate)
    except TopologyError as exc:
        return TopologyCheck(str(path), error=exc)
    return TopologyCheck(str(path), topology, warnings=topology_warnings(topology, str(path), locate))


def topology_warnings(topology: Topology, file: str = "<topology>", locate: Locate | None = None) -> list[TopologyIssue]:
    def issue(at: tuple, message: str, hint: str = "") -> TopologyIssue:
        line, column = (locate(at) if locate else None) or (None, None)
        return TopologyIssue(file, line, column, message, hint)

    found: list[TopologyIssue] = []
    for index, entity in enumerate(topology.entities):
        at = ("entities", index)
        if not topology.neighbours(entity.id):
            found.append(issue(at, f"entity {entity.id!r} has no relation",
                               "correlation places its signals by time only; add how it is connected"))
        elif entity.type == "instance" and not topology.targets(entity.id, "instance_of"):
            found.append(issue(at, f"instance {entity.id!r} is an instance of no service",
                               "add an `instance_of` relation to its service"))
        for kind in ("instance_of", "runs_on"):
            if len(topology.targets(entity.id, kind)) > 1:
                found.append(issue(at, f"{entity.id!r} has {len(topology.targets(entity.id, kind))} `{kind}` "
                                       f"relations; only the first is followed", "keep one"))
    for index, rel in enumerate(topology.relations):
        sources, targets = _FITS[rel.type]
        source_type, target_type = topology.entity_type(rel.source), topology.entity_type(rel.target)
        if rel.source == rel.target:
            found.append(issue(("relations", index), f"relations[{index}]: {rel.source!r} {rel.type} itself",
                               "remove it"))
        elif (sources is not None and source_type not in sources) or (targets is not None and target_type not in targets):
            found.append(issue(("relations", index), f"relations[{index}]: a {source_type} {rel.type} a {target_type} "
                               f"({rel.source} {rel.type} {rel.target}) is probably not meant",
                               f"`{rel.type}` joins {_fit(sources)} to {_fit(targets)}"))
    return found


@dataclass
class EventsCoverage:
    """How a topology covers recorded events: how many were read, the entities they are about (subjects,
    and a trace's callee) with how many events each, those the topology does not hold, and the calls
    between services their traces show that the topology's `calls` and `uses` do not list. A trace's
    caller is not counted as named: its trouble is the callee's evidence, not its own. `described`: the
    entities it does not hold whose events say which service they are instances of (weighed as such,
    `Topology.with_described`), not counted as unlisted. `placed` and `misplaced`: the hosts the events say
    entities run on (`topology.residency_said`) where the topology places them on none, and where it
    places them on another."""

    events: int = 0
    named: Counter = field(default_factory=Counter)
    unlisted: dict[str, int] = field(default_factory=dict)
    unlisted_calls: dict[tuple[str, str], int] = field(default_factory=dict)  # (caller, callee) services → events
    described: dict[str, str] = field(default_factory=dict)  # entity → service: not listed, the events say
    placed: dict[str, str] = field(default_factory=dict)  # entity → host: the events say, the topology does not
    misplaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # entity → (topology's host, events')

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "entities": len(self.named), "unlisted": self.unlisted,
                "unlisted_calls": {f"{a} -> {b}": n for (a, b), n in self.unlisted_calls.items()},
                "described": self.described, "placed": self.placed,
                "misplaced": {e: {"topology": listed, "events": said} for e, (listed, said) in self.misplaced.items()}}


def events_coverage(topology: Topology, events: Iterable[Event]) -> EventsCoverage:
    """See `EventsCoverage`; most-named first, then by name."""
    found = EventsCoverage()
    calls: Counter = Counter()
    seen = list(events)
    for event in seen:
        found.events += 1
        caller, callee = event.attributes.get("caller"), event.attributes.get("callee")
        names = {str(n) for n in (event.subject, callee) if n}
        found.named.update(names)
        if event.type == "rtem.trace.anomaly" and caller in topology and callee in topology:
            pair = (topology.service_of(str(caller)), topology.service_of(str(callee)))
            listed = pair[1] in topology.targets(pair[0], "calls") + topology.targets(pair[0], "uses")
            if pair[0] != pair[1] and not listed:
                calls[pair] += 1
    ordered = sorted(found.named.items(), key=lambda item: (-item[1], item[0]))
    found.described = described_by(seen, topology)
    found.unlisted = {name: n for name, n in ordered if name not in topology and name not in found.described}
    found.unlisted_calls = dict(sorted(calls.items(), key=lambda item: (-item[1], item[0])))
    for entity, host in residency_said(seen, topology.with_instances(found.described)).items():
        listed = topology.host_of(entity)
        if listed is None:
            found.placed[entity] = host
        elif listed != host:
            found.misplaced[entity] = (listed, host)
    return found


@dataclass(frozen=True)
class TopologyDiff:
    """What changed from one topology to another: entity ids, and relations as `source type target`."""

    entities_added: tuple[str, ...] = ()
    entities_removed: tuple[str, ...] = ()
    entities_changed: tuple[str, ...] = ()
    relations_added: tuple[str, ...] = ()
    relations_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(asdict(self).values())

    def summary(self) -> str:
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in asdict(self).items() if v]
        return ", ".join(parts) or "no change"

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items()}


def diff_topologies(old: Topology | None, new: Topology) -> TopologyDiff:
    before = {e.id: e for e in old.entities} if old is not None else {}
    after = {e.id: e for e in new.entities}
    rels_before = {_rel(r) for r in old.relations} if old is not None else set()
    rels_after = {_rel(r) for r in new.relations}
    return TopologyDiff(
        entities_added=tuple(sorted(after.keys() - before.keys())),
        entities_removed=tuple(sorted(before.keys() - after.keys())),
        entities_changed=tuple(sorted(i for i in after.keys() & before.keys() if after[i] != before[i])),
        relations_added=tuple(sorted(rels_after - rels_before)),
        relations_removed=tuple(sorted(rels_before - rels_after)))


def _rel(relation) -> str:
    return f"{relation.source} {relation.type} {relation.target}"


def _fit(types: set[str] | None) -> str:
    return " or ".join(sorted(types)) if types else "any entity"
