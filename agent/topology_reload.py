"""The topology in force, and its hot reload for `rtem run`: one `Topology` behind `current()`.

    source = TopologyReloader(path, audit=audit)     # reads and checks the file, audits `topology.loaded`
    parts = build(..., topology=source)              # triage, the graph and the API read source.current()
    task = asyncio.create_task(source.watch(1.0))    # polls the file; or call source.check_now()

Components are built once around a `TopologySource`; nothing is rewired when the topology changes,
as with the rules (agent/ruleset.py). A changed file is checked as `rtem topology check` does
(rules/topology_check.py) and swapped in as one new `Topology` in a single assignment, or refused with
its file:line while the topology in force stays. Each load is audited (`topology.loaded`, with what
changed: entities and relations added, removed, changed), each refusal too (`topology.refused`, with
the error). Discovery (agent/discovery.py) adds what Prometheus knows through `discovered()`: it is
merged under the file (the file wins on every conflict) and audited as `topology.discovered`.

Several workers each watch their own file (the path they were started with): keep the file the same
on every worker, as with rule files that are not shared. Triage follows the leader's file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from rules import Topology, TopologyError
from rules.topology_check import TopologyDiff, TopologyIssue, check_topology_file, diff_topologies

from .audit import AuditLog

log = logging.getLogger("rtem.topology")

SINGLE = ("instance_of", "runs_on")  # an entity's first one is followed: a second from discovery would be ignored


class TopologySource(Protocol):
    def current(self) -> Topology: ...


class FixedTopology:
    """The topology given at start, for good (`rtem analyze`, tests, `rtem run` without a file to watch)."""

    def __init__(self, topology: Topology):
        self._topology = topology

    def current(self) -> Topology:
        return self._topology


@dataclass(frozen=True)
class TopologyReload:
    """What one look at the file (or one discovery) did; `digest` is the topology in force afterwards."""

    status: Literal["unchanged", "loaded", "refused", "discovered"]
    digest: str
    previous: str | None = None
    diff: TopologyDiff | None = None
    error: TopologyError | None = None
    warnings: tuple[TopologyIssue, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "digest": self.digest, "previous": self.previous,
                "diff": self.diff.to_dict() if self.diff else None,
                "error": self.error.to_dict() if self.error else None,
                "warnings": [str(w) for w in self.warnings], "at": self.at.isoformat()}


class TopologyReloader:
    """Owns the topology in force; see the module docstring for the life of a change."""

    def __init__(self, path: str | Path, *, audit: AuditLog | None = None, actor: str = "rtem run"):
        """Reads and checks the file now: a bad one raises its TopologyError (start-up stops with it)."""
        self.path = Path(path)
        self.audit = audit
        self.actor = actor
        self._fingerprint = self._stat()
        check = check_topology_file(self.path)
        if check.error is not None:
            raise check.error
        self._file: Topology = check.topology
        self._discovered: Topology | None = None
        self._current: Topology = self._file
        self._content = self._read_digest()
        self._refused: str | None = None  # the content last refused: judged once, not every second
        self.last_result = TopologyReload("loaded", self._current.digest, warnings=tuple(check.warnings))
        self._audit_loaded("start", None, None, check.warnings)

    def current(self) -> Topology:
        return self._current

    def status(self) -> dict[str, Any]:
        return {"digest": self._current.digest, "file": str(self.path), "file_digest": self._file.digest,
                "discovered": len(self._discovered.entities) if self._discovered else 0,
                "last_result": self.last_result.to_dict()}

    def check_now(self, via: str = "check_now") -> TopologyReload:
        """Read the file now; when its content changed, check it and swap it in, or refuse it."""
        self._fingerprint = self._stat()
        content = self._read_digest()
        if content in (self._content, self._refused):
            return TopologyReload("unchanged", self._current.digest)
        return self._apply(check_topology_file(self.path), content, via)

    async def reload(self, actor: str, via: str = "api") -> TopologyReload:
        """Check the file now on a worker thread and swap it in here, on the event loop, in the name of
        `actor`; unlike the watcher, a refused file is judged (and refused) again."""
        self._fingerprint = self._stat()
        content = self._read_digest()
        if content == self._content:
            return TopologyReload("unchanged", self._current.digest)
        return self._apply(await asyncio.to_thread(check_topology_file, self.path), content, via, actor)

    def discovered(self, topology: Topology, source: str) -> TopologyReload:
        """Merge what discovery found (`source`: where from) under the file's topology; swapped in and
        audited as `topology.discovered` when the topology in force changes."""
        merged = merge_topologies(self._file, topology)
        self._discovered = topology
        if merged.digest == self._current.digest:
            return TopologyReload("unchanged", merged.digest)
        previous, diff = self._current, diff_topologies(self._current, merged)
        self._current = merged
        if self.audit is not None:
            self.audit.append("topology.discovered", node="topology", inputs={"actor": self.actor, "source": source},
                              decision={"digest": merged.digest, "previous": previous.digest, "diff": diff.to_dict()},
                              reasons=[f"discovery from {source}: {diff.summary()}"], versions={"topology": merged.digest})
        log.info("topology %s discovered from %s (was %s): %s", merged.digest, source, previous.digest, diff.summary())
        self.last_result = TopologyReload("discovered", merged.digest, previous.digest, diff)
        return self.last_result

    async def watch(self, interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Poll the file every `interval` seconds until `stop` is set; a change is judged once the file
        has stood still for one interval, so an editor's half-written save is not."""
        pending = None
        while stop is None or not stop.is_set():
            try:
                await asyncio.wait_for((stop or asyncio.Event()).wait(), timeout=interval)
                break
            except asyncio.TimeoutError:
                pass
            fingerprint = self._stat()
            if fingerprint == self._fingerprint:
                pending = None
                continue
            if fingerprint != pending:
                pending = fingerprint
                continue
            self._fingerprint, pending = fingerprint, None
            try:
                content = self._read_digest()
                if content in (self._content, self._refused):
                    continue
                check = await asyncio.to_thread(check_topology_file, self.path)
                self._apply(check, content, "watch")
            except Exception:  # a reload must never take the service down
                log.exception("topology reload failed; the topology in force stays")

    # -- internals ------------------------------------------------------------------------------------

    def _apply(self, check, content: str, via: str, actor: str | None = None) -> TopologyReload:
        previous, actor = self._current, actor or self.actor
        if check.error is not None:
            self._refused = content
            log.error("topology change refused, %s stays in force: %s", previous.digest, check.error)
            if self.audit is not None:
                self.audit.append("topology.refused", node="topology",
                                  inputs={"actor": actor, "via": via, "file": str(self.path)},
                                  decision={"active": previous.digest, "error": check.error.to_dict()},
                                  reasons=[str(check.error)], versions={"topology": previous.digest})
            self.last_result = TopologyReload("refused", previous.digest, previous.digest, error=check.error)
            return self.last_result
        merged = merge_topologies(check.topology, self._discovered) if self._discovered else check.topology
        diff = diff_topologies(previous, merged)
        self._file, self._current, self._content, self._refused = check.topology, merged, content, None
        self._audit_loaded(via, previous.digest, diff, check.warnings, actor)
        log.info("topology %s loaded from %s (was %s): %s", merged.digest, self.path, previous.digest, diff.summary())
        self.last_result = TopologyReload("loaded", merged.digest, previous.digest, diff, warnings=tuple(check.warnings))
        return self.last_result

    def _audit_loaded(self, via: str, previous: str | None, diff: TopologyDiff | None,
                      warnings: list[TopologyIssue], actor: str | None = None) -> None:
        if self.audit is None:
            return
        actor = actor or self.actor
        counts = {"entities": len(self._current.entities), "relations": len(self._current.relations)}
        summary = diff.summary() if diff is not None else "loaded at start"
        self.audit.append("topology.loaded", node="topology",
                          inputs={"actor": actor, "via": via, "file": str(self.path), "content": self._content},
                          decision={"digest": self._current.digest, "previous": previous, "counts": counts,
                                    "diff": diff.to_dict() if diff is not None else None,
                                    "warnings": [str(w) for w in warnings[:20]]},
                          reasons=[f"{actor} loaded topology {self._current.digest} via {via}: {summary}"],
                          versions={"topology": self._current.digest})

    def _read_digest(self) -> str:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        except OSError:
            return "unreadable"  # judged like any change: refused with the reason the check gives

    def _stat(self) -> tuple:
        try:
            info = self.path.stat()
        except OSError:
            return ()
        return (info.st_ino, info.st_mtime_ns, info.st_size)


def merge_topologies(file: Topology, discovered: Topology | None) -> Topology:
    """The file's topology with what discovery adds: new entities, and relations that neither repeat nor
    contradict the file's (an entity the file places on a host or in a service stays there)."""
    if discovered is None:
        return file
    known = {e.id for e in file.entities}
    entities = list(file.entities) + [e for e in discovered.entities if e.id not in known]
    ids = {e.id for e in entities}
    relations, seen = list(file.relations), {(r.source, r.type, r.target) for r in file.relations}
    placed = {(r.source, r.type) for r in file.relations if r.type in SINGLE}
    for rel in discovered.relations:
        key = (rel.source, rel.type, rel.target)
        if key in seen or rel.source not in ids or rel.target not in ids:
            continue
        if rel.type in SINGLE and (rel.source, rel.type) in placed:
            continue
        relations.append(rel)
        seen.add(key)
    return Topology(entities=tuple(entities), relations=tuple(relations))
