"""The simulation on NATS: telemetry published on the sim clock, commands answered by request/reply."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from bus import Bus, BusSettings
from bus._streams import stream_configs

from ._world import reply

if TYPE_CHECKING:
    from ._telemetry import Outgoing
    from .sim import Simulation

log = logging.getLogger("rtem.demo.sim")


class NatsLink:
    """Connects one `Simulation` to NATS: publishes each tick when the sim clock reaches it, answers the
    commands the action contracts name, and reports the DLQ's dead letters back to the simulation."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self._bus: Bus | None = None
        self._subs: list[Any] = []
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self, nats_url: str) -> None:
        self._bus = await Bus.connect(nats_url, name="rtem-demo-sim")
        await ensure_streams(self._bus)
        await self._subscribe_commands()
        self._subs.append(await self._bus.nc.subscribe("rtem.dlq.>", cb=self._on_dead_letter))
        await settle_subscriptions(self._bus.nc)  # the server knows them all before anyone sends a command
        self.sim.restart_clock()
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
        sim, clock = self.sim, self.sim.clock
        # Stopping is only noticed between ticks, so a tick is published whole or not at all.
        while not self._stopping.is_set():
            wait = clock.wall_seconds(sim.next_tick_s - clock.elapsed())
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), wait)
                    break
                except asyncio.TimeoutError:
                    pass
            try:
                await self._publish(sim.advance(sim.next_tick_s))
            except Exception:  # a lost connection must not end the system; the next tick tries again
                log.exception("publishing a tick of the simulation failed")

    async def _publish(self, out: list[Outgoing]) -> None:
        js = self._bus.js
        acks = [await js.publish_async(o.subject, o.data, headers=o.headers) for o in out]
        await asyncio.gather(*acks)
        self.sim.published += len(out)

    async def _subscribe_commands(self) -> None:
        """One subscription per (action, entity) the contracts allow, as the entities' agents would."""
        nc = self._bus.nc
        for contract in self.sim.contracts.values():
            if contract.executor.kind != "nats":
                continue
            for entity in self.sim.topology.entities:
                if entity.type in contract.target_types:
                    subject = contract.executor.subject.format(action=contract.action, target=entity.id)
                    self._subs.append(await nc.subscribe(subject, cb=self._handler(contract.action, entity.id)))

    def _handler(self, action: str, target: str):
        async def on_command(msg: Msg) -> None:
            answer = self._on_command(action, target, msg)
            if answer is not None and msg.reply:
                await msg.respond(json.dumps(answer).encode())
        return on_command

    def _on_command(self, action: str, target: str, msg: Msg) -> dict[str, Any] | None:
        try:
            request = json.loads(msg.data)
        except ValueError:
            return reply(False, "the request is not JSON")
        if not isinstance(request, dict):
            return reply(False, "the request is not a JSON object")
        if request.get("action", action) != action or request.get("target", target) != target:
            return reply(False, f"{msg.subject} takes {action} on {target}, not "
                                f"{request.get('action')} on {request.get('target')}")
        try:
            return self.sim.command({**request, "action": action, "target": target}, msg.headers)
        except Exception as exc:  # a bad command must not take the simulated system down
            log.exception("command %s on %s failed", action, target)
            return reply(False, f"internal error: {type(exc).__name__}: {exc}")

    async def _on_dead_letter(self, msg: Msg) -> None:
        self.sim.dead_lettered(msg.data or b"")


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


async def ensure_streams(bus: Bus) -> None:
    """Create rtem's streams if missing, without touching the settings of streams rtem made itself."""
    for config in stream_configs(BusSettings()):
        try:
            await bus.js.stream_info(config.name)
        except NotFoundError:
            await bus.js.add_stream(config)
