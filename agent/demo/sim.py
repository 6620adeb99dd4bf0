"""The simulated distributed system `rtem demo` runs, disrupts and lets rtem remediate.

Everything runs in one asyncio process: every tick (5 s of event time) each instance, host, database
and queue publishes a health event and a metric sample to JetStream, active faults add their symptoms
(`_models.py` says which), and every entity answers the remediation commands the action contracts
name (`rtem.cmd.<action>.<target>`, NATS request/reply). The right command clears a fault after a short
recovery delay; any other command is applied and changes nothing about the fault.

The simulation keeps its own clock: event time runs `speed` times faster than the wall clock, so a
demo of two minutes covers twenty minutes of the event time rtem's windows are measured in. The core
(`advance`, `command`) is synchronous and needs no NATS, so a test or a recording can step it directly;
`start` connects it to NATS (`_nats.py`). The state commands change is the `World` (`_world.py`); the
routine health and metric events come from `_telemetry.py`.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from bus import format_time
from rules import Topology, load_contracts

from ._clock import SimClock
from ._models import MODELS, malformed_lines
from ._nats import NatsLink
from ._telemetry import Outgoing, Reporter
from ._world import CommandRejected, Effect, World, reply
from .scenarios import MALFORMED_SUBJECT, Emission, Scenario

log = logging.getLogger("rtem.demo.sim")

TOPOLOGY_PATH = Path(str(resources.files("agent.demo").joinpath("topology.yaml")))
IDEMPOTENCY_HEADER = "Rtem-Idempotency-Key"
_MALFORMED_TAG = re.compile(rb"demo-malformed-([0-9a-f]+)-(\d+)-(\d+)")


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
        self._next_tick = 0.0
        self._reporter = Reporter(self.topology, self.world, self.clock, self._run)
        self._link: NatsLink | None = None

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
        return self.clock.elapsed() if self._link is not None else max(0.0, self._next_tick - self.tick_s)

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
        report = self._reporter
        out = [report.event(t, emission) for emission in self._beginnings(t)]
        live = [(f, t - f.began_s) for f in self.active_faults() if f.scenario.kind != "malformed_burst"]
        world.silent = set().union(*(MODELS[f.scenario.kind].silent(f.scenario, world, e) for f, e in live))
        failing = set().union(*(MODELS[f.scenario.kind].failing(f.scenario, world, e) for f, e in live))
        for entity in report.entities:
            if entity in world.silent:
                continue
            faulty = {}
            for fault, elapsed in live:
                faulty.update(MODELS[fault.scenario.kind].gauges(fault.scenario, world, entity, elapsed))
            out.append(report.event(t, report.health(entity, entity in failing)))
            out.append(report.event(t, report.sample(entity, faulty)))
        for fault, elapsed in live:
            out.extend(report.event(t, e) for e in MODELS[fault.scenario.kind].symptoms(fault.scenario, world, elapsed))
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

    # -- commands --------------------------------------------------------------------------------

    def command(self, request: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """Apply one remediation command and return the reply; None means "do not answer" (a timeout)."""
        action, target = str(request.get("action", "")), str(request.get("target", ""))
        key = request.get("idempotency_key") or (headers or {}).get(IDEMPOTENCY_HEADER)
        answer = self._answer(action, target, request, key)
        self.commands.append({"at_s": self.now_s, "action": action, "target": target, "key": key,
                              "incident_id": request.get("incident_id"), "reply": answer})
        return answer

    def _answer(self, action: str, target: str, request: Mapping[str, Any], key: str | None) -> dict[str, Any] | None:
        injected = self.command_faults.get(target)
        if injected is not None:
            return None if injected.mode == "timeout" else reply(False, injected.error)
        if key and key in self._answers:
            return self._answers[key]  # already applied: the first answer again, no second effect
        contract = self.contracts.get(action)
        if target not in self.topology:
            return reply(False, f"{target!r} is not part of the simulated system")
        if contract is None or self.topology.entity_type(target) not in contract.target_types:
            return reply(False, f"{target} ({self.topology.entity_type(target)}) does not take {action!r}")
        params = request.get("params") or {}
        if not isinstance(params, Mapping):
            return reply(False, f"params must be an object, not {type(params).__name__}")
        try:
            self.world.now_s = self.now_s
            effect = self.world.apply(action, target, params)
        except CommandRejected as rejected:
            return reply(False, str(rejected))
        self.applied.append((key, action, target))
        self._fixes(action, target, key, effect)
        # What a real control plane would say; which fault it fixed stays inside the simulation, so
        # rtem has to verify recovery from telemetry.
        answer = reply(True, None, {**effect.result, "changed": effect.changed,
                                    "at": format_time(self.clock.at(self.now_s))})
        if key:
            self._answers[key] = answer
        return answer

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

    def dead_lettered(self, data: bytes) -> None:
        """A record rtem sent to the DLQ: a malformed burst resolves once every record of it is there."""
        found = _MALFORMED_TAG.search(data)
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

    # -- running on NATS -------------------------------------------------------------------------

    async def start(self, nats_url: str) -> None:
        """Connect, answer commands, and publish telemetry every tick until `stop()`."""
        if self._link is not None:
            raise RuntimeError("the simulation is already running")
        link = NatsLink(self)
        try:
            await link.start(nats_url)
        except BaseException:
            await link.stop()
            raise
        self._link = link

    async def stop(self) -> None:
        if self._link is not None:
            await self._link.stop()
            self._link = None

    def restart_clock(self) -> None:
        """Make event time start again now, at the first tick (the NATS link calls this as it goes live)."""
        self.clock.restart()
        self._next_tick = 0.0

    @property
    def next_tick_s(self) -> float:
        """Event seconds at which the next tick is due."""
        return self._next_tick

