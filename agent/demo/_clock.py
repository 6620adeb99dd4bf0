"""The simulation's clock: event time runs `speed` times faster than the wall clock."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone


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
