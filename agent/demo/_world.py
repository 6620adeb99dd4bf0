"""The simulated system's state that remediation commands change, the commands, and their replies."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rules import Topology


class CommandRejected(Exception):
    """A command the system refuses as given (an unknown version, no replica to promote)."""


@dataclass(frozen=True)
class Effect:
    """What a command did: the result its reply carries, and whether it changed anything."""

    result: dict[str, Any]
    changed: bool = True  # False: applied, but the system was already in that state


class World:
    """The system's state that commands change: placement, versions, replicas, database primaries.

    Fault models read it through the small API at the top; `apply` is the only thing that changes it.
    """

    def __init__(self, topology: Topology, rng: random.Random):
        self.topology = topology
        self.rng = rng
        self.placement = {e.id: topology.host_of(e.id) for e in topology.entities if topology.host_of(e.id)}
        services = [e.id for e in topology.entities if e.type == "service"]
        self.replicas = {s: len(topology.instances(s)) for s in services}
        self.history: dict[str, list[str]] = {s: ["1.0.0"] for s in services}
        self.primary = {e.id: e.id for e in topology.entities if e.type == "database" and not _replica_of(e)}
        self.drained: set[str] = set()
        self.circuits: dict[tuple[str, str], float] = {}  # (caller service, callee service) -> open until
        self.shedding: dict[str, int] = {}
        self.restarts: Counter[str] = Counter()
        self.pages: list[dict[str, Any]] = []
        self.silent: set[str] = set()  # set by the simulation at every tick, before symptoms are made
        self.now_s = 0.0

    # -- read API for the fault models -------------------------------------------------------------

    def service_of(self, entity: str) -> str:
        return self.topology.service_of(entity)

    def host_of(self, entity: str) -> str | None:
        return self.placement.get(entity)

    def residents(self, host: str) -> list[str]:
        return sorted(e for e, h in self.placement.items() if h == host)

    def residents_by_service(self, host: str) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for entity in self.residents(host):
            if self.topology.entity_type(entity) == "instance":
                grouped[self.service_of(entity)].append(entity)
        return dict(grouped)

    def live_instances(self, service: str) -> list[str]:
        return [i for i in sorted(self.topology.instances(service)) if i not in self.silent]

    def caller_instances(self, service: str) -> list[str]:
        """Live instances of the services that call `service`, except callers whose circuit to it is open."""
        callers = [c for c in sorted(self.topology.sources(service, "calls"))
                   if self.circuits.get((c, service), -1.0) < self.now_s]
        return [i for c in callers for i in self.live_instances(c)]

    def deploy(self, service: str, version: str, previous: str | None = None) -> None:
        history = self.history.setdefault(service, [])
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        history.append(version)

    def version(self, service: str) -> str:
        return self.history[service][-1]

    # -- commands ------------------------------------------------------------------------------------

    def apply(self, action: str, target: str, params: Mapping[str, Any]) -> Effect:
        handlers = {
            "restart_instance": self._restart_instance, "rollback_deploy": self._rollback_deploy,
            "scale_out": self._scale_out, "failover_database": self._failover_database,
            "drain_host": self._drain_host, "open_circuit": self._open_circuit, "shed_load": self._shed_load,
            "notify_oncall": self._notify_oncall,
        }
        if action not in handlers:
            raise CommandRejected(f"{target} does not support {action!r}")
        return handlers[action](target, params)

    def _restart_instance(self, target: str, params: Mapping[str, Any]) -> Effect:
        self.restarts[target] += 1
        return Effect({"restarts": self.restarts[target], "grace_seconds": params.get("grace_seconds", 30)})

    def _rollback_deploy(self, target: str, params: Mapping[str, Any]) -> Effect:
        history = self.history[target]
        current = history[-1]
        to_version = params.get("to_version")
        if to_version is None:
            if len(history) < 2:
                return Effect({"version": current, "rolled_back_from": current}, changed=False)
            to_version = history[-2]
        elif to_version not in history:
            raise CommandRejected(f"{target} never ran version {to_version!r}; it ran {', '.join(history)}")
        if to_version == current:
            return Effect({"version": current, "rolled_back_from": current}, changed=False)
        history.append(to_version)
        # rolled_back_from is what the contract's roll-forward compensation needs
        return Effect({"version": to_version, "rolled_back_from": current})

    def _scale_out(self, target: str, params: Mapping[str, Any]) -> Effect:
        replicas = params.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise CommandRejected(f"replicas must be a positive integer, not {replicas!r}")
        previous = self.replicas[target]
        self.replicas[target] = replicas
        # The contract's replicas is a total, and a larger total is what adds capacity.
        return Effect({"replicas": replicas, "previous_replicas": previous}, changed=replicas > previous)

    def _failover_database(self, target: str, params: Mapping[str, Any]) -> Effect:
        replicas = [e.id for e in self.topology.entities if _replica_of(e) == target]
        if not replicas:
            raise CommandRejected(f"{target} has no replica to promote")
        serving = self.primary.get(target, target)
        candidates = [r for r in [target, *replicas] if r != serving]
        chosen = params.get("replica") or candidates[0]
        if chosen not in candidates:
            raise CommandRejected(f"{chosen!r} is not a replica of {target} that could be promoted "
                                  f"(candidates: {', '.join(candidates)})")
        self.primary[target] = chosen
        return Effect({"primary": chosen, "previous_primary": serving})

    def _drain_host(self, target: str, params: Mapping[str, Any]) -> Effect:
        if target in self.drained:
            return Effect({"moved": {}, "cordoned": True}, changed=False)
        others = sorted(h for h in {e.id for e in self.topology.entities if e.type == "host"}
                        if h != target and h not in self.drained)
        if not others:
            raise CommandRejected(f"no other host to move {target}'s workloads to")
        moved = {}
        for index, entity in enumerate(self.residents(target)):
            moved[entity] = self.placement[entity] = others[index % len(others)]
        self.drained.add(target)
        return Effect({"moved": moved, "cordoned": True})

    def _open_circuit(self, target: str, params: Mapping[str, Any]) -> Effect:
        caller = str(params.get("from", ""))
        if caller not in self.topology.sources(target, "calls"):
            raise CommandRejected(f"{caller!r} does not call {target}")
        until = self.now_s + float(params.get("duration_s", 300))
        self.circuits[(caller, target)] = until
        return Effect({"from": caller, "open_until_s": until})

    def _shed_load(self, target: str, params: Mapping[str, Any]) -> Effect:
        previous = self.shedding.get(target, 0)
        self.shedding[target] = int(params.get("percent", 0))
        return Effect({"percent": self.shedding[target], "previous_percent": previous})

    def _notify_oncall(self, target: str, params: Mapping[str, Any]) -> Effect:
        self.pages.append({"target": target, **params})
        return Effect({"paged": len(self.pages)})


def _replica_of(entity) -> str | None:
    return (entity.model_extra or {}).get("replica_of")


def reply(ok: bool, error: str | None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """A command's answer, as rtem's NATS executor reads it."""
    return {"ok": ok, "error": error, "result": result or {}}
