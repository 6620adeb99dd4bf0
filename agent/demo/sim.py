"""The simulated distributed system `rtem demo` runs, disrupts and lets rtem remediate.

Everything runs in one asyncio process: every tick (5 s of event time) each instance, host, database
and queue publishes a health event and a metric sample to JetStream, active faults add their symptoms
(`scenarios.py` says which), and every entity answers the remediation commands the action contracts
name (`rtem.cmd.<action>.<target>`, NATS request/reply). The right command clears a fault after a short
recovery delay; any other command is applied and changes nothing about the fault.

The simulation keeps its own clock: event time runs `speed` times faster than the wall clock, so a
demo of two minutes covers twenty minutes of the event time rtem's windows are measured in. The core
(`advance`, `command`) is synchronous and needs no NATS, so a test or a recording can step it directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from bus import Bus, BusSettings, format_time
from bus._streams import event_subject, stream_configs
from rules import Topology, load_contracts

from .scenarios import MALFORMED_SUBJECT, MODELS, Emission, Scenario, malformed_lines

log = logging.getLogger("rtem.demo.sim")

TOPOLOGY_PATH = Path(str(resources.files("agent.demo").joinpath("topology.yaml")))
TELEMETRY_TYPES = ("instance", "host", "database", "queue")  # entities that run and report; services don't
IDEMPOTENCY_HEADER = "Rtem-Idempotency-Key"
_MALFORMED_TAG = re.compile(rb"demo-malformed-([0-9a-f]+)-(\d+)-(\d+)")
_FIXED_GAUGES = frozenset({"connections_max", "consumers"})  # configuration, not measurements: no noise


class SimClock:
    """Event time = `start` + wall time elapsed since `restart()` × `speed`."""

    def __init__(self, speed: float = 10.0, start: datetime | None = None):
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = float(speed)
        start = start or datetime.now(timezone.utc)
        self.start = start.astimezone(timezone.utc).replace(microsecond=start.microsecond // 1000 * 1000)
        self._wall0 = time.monotonic()

    def restart(self) -> None:
        """Make event time `start` again now (the simulation calls this when it starts running)."""
        self._wall0 = time.monotonic()

    def elapsed(self) -> float:
        """Event seconds since `start`."""
        return (time.monotonic() - self._wall0) * self.speed

    def now(self) -> datetime:
        return self.at(self.elapsed())

    def at(self, elapsed: float) -> datetime:
        return self.start + timedelta(seconds=elapsed)

    def wall_seconds(self, event_seconds: float) -> float:
        return event_seconds / self.speed

    async def sleep_until(self, elapsed: float) -> None:
        delay = (elapsed - self.elapsed()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class CommandFault:
    """Executor failure injection for one target: answer every command with an error, or not at all."""

    mode: Literal["error", "timeout"] = "error"
    error: str = "simulated executor failure: the target's control plane refused the command"


@dataclass
class Fault:
    """One injected scenario and where it is in its life; times are event seconds since the clock's start."""

    id: str
    scenario: Scenario
    start_s: float
    began_s: float | None = None
    fixed_s: float | None = None
    fixed_by: tuple[str | None, str, str] | None = None  # (idempotency key, action, target)
    clear_s: float | None = None
    resolved_s: float | None = None
    dead_lettered: set[int] = field(default_factory=set)  # malformed bursts: indices seen in the DLQ

    @property
    def status(self) -> str:
        if self.resolved_s is not None:
            return "resolved"
        if self.began_s is None:
            return "scheduled"
        return "recovering" if self.fixed_s is not None else "active"

    @property
    def resolved(self) -> bool:
        return self.resolved_s is not None


@dataclass(frozen=True)
class Outgoing:
    """One message for JetStream; `event` is the CloudEvent it carries (None for malformed lines)."""

    subject: str
    data: bytes
    headers: dict[str, str]
    event: dict[str, Any] | None = None


class CommandRejected(Exception):
    """A command the system refuses as given (an unknown version, no replica to promote)."""


@dataclass(frozen=True)
class Effect:
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


class Simulation:
    """The simulated shop: telemetry out, commands in, faults injected by `inject`.

    `speed` is event seconds per wall second; `tick_s` the telemetry period and `recovery_s` the delay
    between the right remediation and recovery, both in event time. `command_faults` maps a target to
    a `CommandFault` (or just "error" / "timeout") to make its executor fail.
    """

    def __init__(self, *, speed: float = 10.0, tick_s: float = 5.0, recovery_s: float = 15.0, seed: int = 0,
                 start: datetime | None = None, topology_path: str | Path = TOPOLOGY_PATH,
                 command_faults: Mapping[str, CommandFault | str] | None = None,
                 contracts_dir: str | Path | None = None):
        self.clock = SimClock(speed, start)
        self.tick_s = tick_s
        self.recovery_s = recovery_s
        self.topology_path = Path(topology_path)
        self.topology_dict: dict[str, Any] = yaml.safe_load(self.topology_path.read_text("utf-8"))
        self.topology = Topology.from_dict(self.topology_dict, origin=str(self.topology_path))
        self.contracts = load_contracts(contracts_dir)
        self.world = World(self.topology, random.Random(seed))
        self.faults: list[Fault] = []
        self.applied: list[tuple[str | None, str, str]] = []  # (idempotency key, action, target)
        self.commands: list[dict[str, Any]] = []  # every request received, with its answer
        self.command_faults: dict[str, CommandFault] = {}
        for target, fault in (command_faults or {}).items():
            self.fail_commands(target, fault)
        self.published = 0
        self._answers: dict[str, dict[str, Any]] = {}
        self._run = uuid.uuid4().hex[:8]  # event ids stay unique across runs on one server
        self._seq = 0
        self._next_tick = 0.0
        self._baseline = {e: _baseline(self.topology.entity_type(e), self.world.rng) for e in self._reporters()}
        self._bus: Bus | None = None
        self._subs: list[Any] = []
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    # -- faults ----------------------------------------------------------------------------------

    def inject(self, scenario: Scenario) -> Fault:
        """Schedule `scenario` to begin `scenario.at_s` event seconds from now."""
        fault = Fault(id=f"{scenario.name}#{len(self.faults) + 1}", scenario=scenario,
                      start_s=self.now_s + scenario.at_s)
        self.faults.append(fault)
        return fault

    def active_faults(self) -> list[Fault]:
        """Faults that have begun and are not resolved yet (recovering ones included)."""
        return [f for f in self.faults if f.status in ("active", "recovering")]

    def healthy(self) -> bool:
        """True when no fault is active or recovering: every entity reports ok health and no anomalies."""
        return not self.active_faults()

    def fail_commands(self, target: str, fault: CommandFault | str | None) -> None:
        """Make commands to `target` fail ("error"), go unanswered ("timeout"), or work again (None)."""
        if fault is None:
            self.command_faults.pop(target, None)
        else:
            self.command_faults[target] = CommandFault(fault) if isinstance(fault, str) else fault

    @property
    def now_s(self) -> float:
        """Event seconds since the clock's start: live while running, else the last tick's time."""
        return self.clock.elapsed() if self._task is not None else max(0.0, self._next_tick - self.tick_s)

    @property
    def pages(self) -> list[dict[str, Any]]:
        return self.world.pages

    # -- telemetry -------------------------------------------------------------------------------

    def advance(self, until_s: float) -> list[Outgoing]:
        """Run every tick due up to `until_s` (event seconds) and return what they publish."""
        out: list[Outgoing] = []
        while self._next_tick <= until_s:
            out.extend(self._tick(self._next_tick))
            self._next_tick += self.tick_s
        return out

    def _tick(self, t: float) -> list[Outgoing]:
        world = self.world
        world.now_s = t
        self._update_faults(t)
        out = [self._event(t, emission) for emission in self._beginnings(t)]
        live = [(f, t - f.began_s) for f in self.active_faults() if f.scenario.kind != "malformed_burst"]
        world.silent = set().union(*(MODELS[f.scenario.kind].silent(f.scenario, world, e) for f, e in live))
        failing = set().union(*(MODELS[f.scenario.kind].failing(f.scenario, world, e) for f, e in live))
        for entity in self._reporters():
            if entity in world.silent:
                continue
            out.append(self._event(t, self._health(entity, entity in failing)))
            out.append(self._event(t, self._sample(entity, live)))
        for fault, elapsed in live:
            out.extend(self._event(t, e) for e in MODELS[fault.scenario.kind].symptoms(fault.scenario, world, elapsed))
        return out + self._malformed(t)

    def _update_faults(self, t: float) -> None:
        for fault in self.faults:
            if fault.status == "recovering" and fault.clear_s is not None and t >= fault.clear_s:
                fault.resolved_s = t

    def _beginnings(self, t: float) -> list[Emission]:
        """Faults due to begin now; their opening events (a deployment announcement) go out first."""
        emissions = []
        for fault in self.faults:
            if fault.status == "scheduled" and t >= fault.start_s:
                fault.began_s = t
                emissions.extend(MODELS[fault.scenario.kind].begin(fault.scenario, self.world))
                log.info("fault %s began on %s", fault.id, fault.scenario.target)
        return emissions

    def _malformed(self, t: float) -> list[Outgoing]:
        out = []
        for index, fault in enumerate(self.faults):
            if fault.scenario.kind == "malformed_burst" and fault.began_s == t:
                token = f"demo-malformed-{self._run}-{index}"
                for n, line in enumerate(malformed_lines(token, fault.scenario.params["count"])):
                    out.append(Outgoing(MALFORMED_SUBJECT, line, {"Nats-Msg-Id": f"{token}-{n}"}))
        return out

    def _reporters(self) -> list[str]:
        return [e.id for e in self.topology.entities if e.type in TELEMETRY_TYPES]

    def _health(self, entity: str, failing: bool) -> Emission:
        status = "failing" if failing else "ok"
        attributes = {"status": status, **self._place(entity)}
        if entity in self.world.drained:
            attributes["cordoned"] = True  # a drained host is back, but takes no new workloads
        return Emission("rtem.health", entity, "error" if failing else "info",
                        f"health check {status} on {entity}", attributes)

    def _sample(self, entity: str, live: list[tuple[Fault, float]]) -> Emission:
        rng = self.world.rng
        gauges = {name: value if name in _FIXED_GAUGES else round(value * rng.uniform(0.9, 1.1), 3)
                  for name, value in self._baseline[entity].items()}
        for fault, elapsed in live:
            gauges.update(MODELS[fault.scenario.kind].gauges(fault.scenario, self.world, entity, elapsed))
        if entity in self.world.primary:
            gauges["primary"] = self.world.primary[entity]
        if self.topology.entity_type(entity) == "instance":
            gauges["replicas"] = self.world.replicas[self.topology.service_of(entity)]
        return Emission("rtem.metric.sample", entity, "info", f"metrics of {entity}", {**self._place(entity), **gauges})

    def _place(self, entity: str) -> dict[str, str]:
        place = {"host.name": self.world.host_of(entity) or entity}
        if self.topology.entity_type(entity) == "instance":
            place.update({"service.name": self.topology.service_of(entity), "service.instance.id": entity})
        return place

    def _event(self, t: float, emission: Emission) -> Outgoing:
        self._seq += 1
        event_id = f"demo-{self._run}-{self._seq:07d}"
        origin = emission.attributes.get("caller") if emission.type == "rtem.trace.anomaly" else emission.subject
        event = {
            "specversion": "1.0", "id": event_id, "source": f"/demo/{self.topology.service_of(str(origin))}",
            "type": emission.type, "time": format_time(self.clock.at(t)), "subject": emission.subject,
            "datacontenttype": "application/json",
            "data": {"severity": emission.severity, "message": emission.message,
                     "attributes": dict(emission.attributes)},
        }
        return Outgoing(event_subject(emission.type), json.dumps(event).encode(), {"Nats-Msg-Id": event_id}, event)

    # -- commands --------------------------------------------------------------------------------

    def command(self, request: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """Apply one remediation command and return the reply; None means "do not answer" (a timeout)."""
        action, target = str(request.get("action", "")), str(request.get("target", ""))
        key = request.get("idempotency_key") or (headers or {}).get(IDEMPOTENCY_HEADER)
        reply = self._answer(action, target, request, key)
        self.commands.append({"at_s": self.now_s, "action": action, "target": target, "key": key,
                              "incident_id": request.get("incident_id"), "reply": reply})
        return reply

    def _answer(self, action: str, target: str, request: Mapping[str, Any], key: str | None) -> dict[str, Any] | None:
        injected = self.command_faults.get(target)
        if injected is not None:
            return None if injected.mode == "timeout" else _reply(False, injected.error)
        if key and key in self._answers:
            return self._answers[key]  # already applied: the first answer again, no second effect
        contract = self.contracts.get(action)
        if target not in self.topology:
            return _reply(False, f"{target!r} is not part of the simulated system")
        if contract is None or self.topology.entity_type(target) not in contract.target_types:
            return _reply(False, f"{target} ({self.topology.entity_type(target)}) does not take {action!r}")
        params = request.get("params") or {}
        if not isinstance(params, Mapping):
            return _reply(False, f"params must be an object, not {type(params).__name__}")
        try:
            self.world.now_s = self.now_s
            effect = self.world.apply(action, target, params)
        except CommandRejected as rejected:
            return _reply(False, str(rejected))
        self.applied.append((key, action, target))
        self._fixes(action, target, key, effect)
        # What a real control plane would say; which fault it fixed stays inside the simulation, so
        # rtem has to verify recovery from telemetry.
        reply = _reply(True, None, {**effect.result, "changed": effect.changed,
                                    "at": format_time(self.clock.at(self.now_s))})
        if key:
            self._answers[key] = reply
        return reply

    def _fixes(self, action: str, target: str, key: str | None, effect: Effect) -> list[str]:
        """Mark the active faults this command fixes; they recover `recovery_s` later."""
        if not effect.changed:
            return []
        cleared = []
        now = self.now_s
        for fault in self.faults:
            if fault.status == "active" and fault.scenario.fixed_by(action, target):
                fault.fixed_s, fault.clear_s, fault.fixed_by = now, now + self.recovery_s, (key, action, target)
                cleared.append(fault.id)
                log.info("%s %s fixes %s; recovered at +%.0fs", action, target, fault.id, fault.clear_s)
        return cleared

    # -- running on NATS -------------------------------------------------------------------------

    async def start(self, nats_url: str) -> None:
        """Connect, answer commands, and publish telemetry every tick until `stop()`."""
        if self._task is not None:
            raise RuntimeError("the simulation is already running")
        self._bus = await Bus.connect(nats_url, name="rtem-demo-sim")
        await _ensure_streams(self._bus)
        await self._subscribe_commands()
        self._subs.append(await self._bus.nc.subscribe("rtem.dlq.>", cb=self._on_dead_letter))
        await settle_subscriptions(self._bus.nc)  # the server knows them all before anyone sends a command
        self.clock.restart()
        self._next_tick = 0.0
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run_ticks(), name="rtem-demo-sim")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone already; nothing left to undo
                pass
        self._subs.clear()
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    async def _run_ticks(self) -> None:
        # Stopping is only noticed between ticks, so a tick is published whole or not at all.
        while not self._stopping.is_set():
            wait = self.clock.wall_seconds(self._next_tick - self.clock.elapsed())
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), wait)
                    break
                except asyncio.TimeoutError:
                    pass
            try:
                await self._publish(self.advance(self._next_tick))
            except Exception:  # a lost connection must not end the system; the next tick tries again
                log.exception("publishing a tick of the simulation failed")

    async def _publish(self, out: list[Outgoing]) -> None:
        js = self._bus.js
        acks = [await js.publish_async(o.subject, o.data, headers=o.headers) for o in out]
        await asyncio.gather(*acks)
        self.published += len(out)

    async def _subscribe_commands(self) -> None:
        """One subscription per (action, entity) the contracts allow, as the entities' agents would."""
        nc = self._bus.nc
        for contract in self.contracts.values():
            if contract.executor.kind != "nats":
                continue
            for entity in self.topology.entities:
                if entity.type in contract.target_types:
                    subject = contract.executor.subject.format(action=contract.action, target=entity.id)
                    self._subs.append(await nc.subscribe(subject, cb=self._handler(contract.action, entity.id)))

    def _handler(self, action: str, target: str):
        async def on_command(msg: Msg) -> None:
            reply = self._on_command(action, target, msg)
            if reply is not None and msg.reply:
                await msg.respond(json.dumps(reply).encode())
        return on_command

    def _on_command(self, action: str, target: str, msg: Msg) -> dict[str, Any] | None:
        try:
            request = json.loads(msg.data)
        except ValueError:
            return _reply(False, "the request is not JSON")
        if not isinstance(request, dict):
            return _reply(False, "the request is not a JSON object")
        if request.get("action", action) != action or request.get("target", target) != target:
            return _reply(False, f"{msg.subject} takes {action} on {target}, not "
                                 f"{request.get('action')} on {request.get('target')}")
        try:
            return self.command({**request, "action": action, "target": target}, msg.headers)
        except Exception as exc:  # a bad command must not take the simulated system down
            log.exception("command %s on %s failed", action, target)
            return _reply(False, f"internal error: {type(exc).__name__}: {exc}")

    async def _on_dead_letter(self, msg: Msg) -> None:
        """Malformed bursts resolve once rtem has dead-lettered every record of them."""
        found = _MALFORMED_TAG.search(msg.data or b"")
        if not found or found.group(1).decode() != self._run:
            return
        index, line = int(found.group(2)), int(found.group(3))
        if index >= len(self.faults):
            return
        fault = self.faults[index]
        fault.dead_lettered.add(line)
        if fault.resolved_s is None and len(fault.dead_lettered) >= fault.scenario.params["count"]:
            fault.resolved_s = self.now_s
            log.info("fault %s resolved: all %d records are in the DLQ", fault.id, len(fault.dead_lettered))


async def settle_subscriptions(nc, timeout: float = 5.0) -> None:
    """Return once the server has every subscription made so far on `nc`.

    nats-py's `flush()` writes its PING ahead of commands still queued, so it does not prove that. A
    request to ourselves is queued behind the subscriptions, and the server handles one connection's
    commands in order: its answer does.
    """
    async def echo(msg: Msg) -> None:
        await msg.respond(b"")

    probe = await nc.subscribe(nc.new_inbox(), cb=echo)
    try:
        await nc.request(probe.subject, b"", timeout=timeout)
    finally:
        await probe.unsubscribe()


def _reply(ok: bool, error: str | None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ok": ok, "error": error, "result": result or {}}


def _replica_of(entity) -> str | None:
    return (entity.model_extra or {}).get("replica_of")


def _baseline(entity_type: str | None, rng: random.Random) -> dict[str, float]:
    """An entity's normal gauges; each sample varies them by ±10%."""
    if entity_type == "instance":
        return {"cpu_pct": rng.uniform(15, 35), "mem_pct": rng.uniform(35, 55),
                "error_rate": rng.uniform(0.001, 0.004), "latency_ms": rng.uniform(20, 60)}
    if entity_type == "host":
        return {"cpu_pct": rng.uniform(20, 40), "mem_pct": rng.uniform(40, 60), "load1": rng.uniform(0.5, 2.0)}
    if entity_type == "database":
        return {"connections_in_use": rng.uniform(20, 35), "connections_max": 100,
                "replica_lag_s": rng.uniform(0.1, 0.5), "query_latency_ms": rng.uniform(2, 6)}
    if entity_type == "queue":
        return {"depth": rng.uniform(5, 30), "consumers": 2}
    return {}


async def _ensure_streams(bus: Bus) -> None:
    """Create rtem's streams if missing, without touching the settings of streams rtem made itself."""
    for config in stream_configs(BusSettings()):
        try:
            await bus.js.stream_info(config.name)
        except NotFoundError:
            await bus.js.add_stream(config)
