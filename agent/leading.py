"""The leader's duty cycle in `rtem run`: keep the leader lease, and do the leader's work only while it
is held (docs/deployment.md).

Every third of the lease the worker renews it (or takes it, when it is free). A renewal that has not
finished within that third — the database is down or unreachable — counts as lost: the work stops,
and starts again once the lease is held again (at the same epoch if it never lapsed, else at the next).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from . import metrics
from .cluster import Leadership

log = logging.getLogger("rtem.run")


class LeaderLoop:
    """`work(stop)` starts the leader's tasks, which end once `stop` is set; `wind_down()` finishes what
    they left running (the incidents' threads)."""

    def __init__(self, leadership: Leadership, lease_s: float,
                 work: Callable[[asyncio.Event], list[asyncio.Task]], wind_down: Callable[[], Awaitable[None]]):
        self.leadership = leadership
        self.every_s = lease_s / 3
        self._work, self._wind_down = work, wind_down
        self.tasks: list[asyncio.Task] = []
        self.stop_work = asyncio.Event()
        self._keeping: asyncio.Future | None = None  # the renewal in flight

    @property
    def leading(self) -> bool:
        return bool(self.tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the lease until `stop`; then stop the work and hand the lease over at once."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.every_s)
            except asyncio.TimeoutError:
                await self.keep()

    async def keep(self) -> None:
        """Renew or take the lease, and start or stop the work as it was won or lost."""
        if self._keeping is None or self._keeping.done():  # never more than one renewal in flight
            self._keeping = asyncio.ensure_future(asyncio.to_thread(self._renew))
        try:
            leading = await asyncio.wait_for(asyncio.shield(self._keeping), self.every_s)
        except asyncio.TimeoutError:
            log.error("the leader lease was not renewed within %.1fs (is the database reachable?); acting as a "
                      "standby until it is", self.every_s)
            leading = False
        except Exception:
            log.exception("keeping the leader lease failed; acting as a standby until it can be kept")
            leading = False
        if leading and not self.tasks:
            self.stop_work = asyncio.Event()
            self.tasks = self._work(self.stop_work)
            metrics.LEADER.set(1)
        elif not leading and self.tasks:
            await self.stop_leading()

    async def stop_leading(self) -> None:
        """Stop the work (after what it has in hand) and what it left running."""
        self.stop_work.set()
        tasks, self.tasks = self.tasks, []
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._wind_down()
        metrics.LEADER.set(0)

    async def leave(self) -> None:
        """On the way out: stop leading, and release the lease so that a standby need not wait for it."""
        if self.tasks:
            await self.stop_leading()
        try:
            await asyncio.to_thread(self.leadership.release)
        except Exception:
            log.exception("releasing the leader lease failed; a standby takes over when it expires")

    def _renew(self) -> bool:
        self.leadership.heartbeat()
        return self.leadership.keep()
