"""The worker's duty cycle in `rtem run`: its heartbeat, and the leader lease, with the leader's work
done only while the lease is held (docs/deployment.md).

Every third of the lease the worker beats (its own lease, and its incidents') and renews the leader
lease (or takes it, when it is free). A renewal that has not finished within that third — the
database is down or unreachable — counts as lost: the work stops, and starts again once the lease is
held again (at the same epoch if it never lapsed, else at the next).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import metrics
from .cluster import Leadership

log = logging.getLogger("rtem.run")


class LeaderLoop:
    """`work(stop)` starts the leader's tasks, which end once `stop` is set; `heartbeat()` (on a worker
    thread, before each renewal) keeps what the worker holds besides: by default its worker lease."""

    def __init__(self, leadership: Leadership, lease_s: float,
                 work: Callable[[asyncio.Event], list[asyncio.Task]], *,
                 heartbeat: Callable[[], None] | None = None):
        self.leadership = leadership
        self.every_s = lease_s / 3
        self._work = work
        self._heartbeat = heartbeat or leadership.heartbeat
        # Its own thread: renewals never queue behind incident threads that fill the default pool
        # (a slow LLM call each), which would let the leases lapse under load.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="rtem-heartbeat")
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
                try:
                    await self.keep()
                except Exception:  # never let the loop end: a worker that stops beating is a dead worker
                    log.exception("the heartbeat failed; trying again at the next one")

    async def keep(self) -> None:
        """Renew or take the lease, and start or stop the work as it was won or lost."""
        if self._keeping is None or self._keeping.done():  # never more than one renewal in flight
            self._keeping = asyncio.get_running_loop().run_in_executor(self._thread, self._renew)
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
            try:  # restoring triage's state reads the database, which may have just come back
                self.tasks = self._work(self.stop_work)
            except Exception:
                log.exception("starting the leader's work failed; trying again at the next renewal")
                return
            metrics.LEADER.set(1)
        elif not leading and self.tasks:
            await self.stop_leading()

    async def stop_leading(self) -> None:
        """Stop the work (after what it has in hand)."""
        self.stop_work.set()
        tasks, self.tasks = self.tasks, []
        await asyncio.gather(*tasks, return_exceptions=True)
        metrics.LEADER.set(0)

    async def leave(self) -> None:
        """On the way out: stop leading, and release the lease so that a standby need not wait for it."""
        if self.tasks:
            await self.stop_leading()
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.leadership.release)
        except Exception:
            log.exception("releasing the leader lease failed; a standby takes over when it expires")
        finally:
            self._thread.shutdown(wait=False)

    def _renew(self) -> bool:
        self._heartbeat()
        return self.leadership.keep()
