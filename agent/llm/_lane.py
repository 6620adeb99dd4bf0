"""The LLM's lane: a few worker threads, fed earliest deadline first, that never let one incident starve another.

Every incident's LLM work (its diagnosis, then its proposals) runs as a job with the incident's deadline.
Jobs are taken in deadline order (then in the order they came): an incident that began earlier is served
first, so its proposals do not wait behind the diagnoses of incidents that opened after it.
The caller waits on the job's future at most until that deadline and then lets the deterministic answer
stand. A job whose deadline passed while it waited in the queue is dropped, never run: a backlog behind a
slow model costs the later incidents nothing but their own deadline, instead of growing without end. A
job that is running when its deadline passes stops soon after it, because every HTTP call it makes is
bounded by `Deadline.cutoff` (the deadline plus a short grace); an answer that still arrives in that grace
is *late*: the caller has moved on, and the future's done-callback decides what a late answer may still
be good for (docs/llm.md).

The worker count is fixed (the provider's concurrency: 1 for llama.cpp, which serves one request at a
time). Workers start when there is work and end after `idle_s` without any, so an idle reasoner holds no
thread.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from . import metrics
from ._errors import LLMError

log = logging.getLogger("rtem.llm")

T = TypeVar("T")

# How long past its deadline a call already in flight may still finish: long enough for an answer that was
# nearly there to be read as a late hypothesis, short enough that an abandoned call frees its worker soon.
LATE_GRACE = 0.5  # of the deadline
MAX_LATE_GRACE_S = 10.0


class DeadlinePassed(LLMError):
    """The incident's LLM deadline passed: no answer in time, or none may be asked for any more."""


def missed(given_s: float, deadline_s: float, why: str = "") -> str:
    """The fallback reason of a step past its deadline, as the audit log says it ("deadline: ..."); `given_s`
    is what the step had of the incident's `deadline_s` (propose gets what the diagnosis left)."""
    stands = "the deterministic answer stands" + (f" ({why})" if why else "")
    if given_s <= 0:
        return f"deadline: the diagnosis used all of the {deadline_s:g} s deadline; {stands}"
    within = (f"the {given_s:.1f} s the diagnosis left of the {deadline_s:g} s deadline" if given_s < deadline_s
              else f"{deadline_s:g} s")
    return f"deadline: no LLM answer within {within}; {stands}"


def late_result(future: Future):
    """What a job abandoned at its deadline produced after all, or None: cancelled, dropped unrun, or failed
    (most often cut at its cutoff), there is nothing to read."""
    if future.cancelled() or future.exception() is not None:
        return None
    return future.result()


@dataclass(frozen=True)
class Deadline:
    """When an incident's LLM work must be done, on the monotonic clock.

    `at`: after it, no new call starts and the caller stops waiting. `cutoff`: a call already in flight is
    cut by then (its answer, if any, is late)."""

    at: float
    grace_s: float = 0.0

    @classmethod
    def after(cls, seconds: float, *, now: float | None = None, grace: float = LATE_GRACE) -> Deadline:
        """A deadline `seconds` from now, with a grace of `grace` × `seconds` (at most MAX_LATE_GRACE_S)."""
        start = time.monotonic() if now is None else now
        return cls(start + seconds, min(MAX_LATE_GRACE_S, max(0.0, grace * seconds)))

    @property
    def cutoff(self) -> float:
        return self.at + self.grace_s

    def left(self, now: float | None = None) -> float:
        """Seconds until the deadline (negative once it passed)."""
        return self.at - (time.monotonic() if now is None else now)

    def passed(self, now: float | None = None) -> bool:
        return self.left(now) <= 0

    def call_timeout(self, cap: float, now: float | None = None) -> float:
        """The timeout of one call started now: at most `cap` (the provider's own timeout), ending by the
        cutoff. Zero or less: no call may start."""
        now = time.monotonic() if now is None else now
        if self.passed(now):
            return 0.0
        return min(cap, self.cutoff - now)


@dataclass
class _Job:
    run: Callable[[], object]
    deadline: Deadline
    future: Future
    label: str


_STOP = object()


class Lane:
    """A fixed number of worker threads taking jobs earliest deadline first, each job with its deadline."""

    def __init__(self, workers: int, *, name: str = "rtem-llm", idle_s: float = 30.0):
        if workers < 1:
            raise ValueError(f"a lane needs at least one worker, not {workers}")
        self.workers = workers
        self.name = name
        self.idle_s = idle_s
        self.dropped = 0  # jobs whose deadline passed before a worker took them: never run
        self._queue: queue.PriorityQueue = queue.PriorityQueue()  # (deadline, arrival, job)
        self._arrival = itertools.count()
        self._lock = threading.Lock()
        self._live = 0
        self._closed = False

    def submit(self, run: Callable[[], T], deadline: Deadline, label: str = "") -> Future[T]:
        """Queue `run` behind the jobs already waiting with an earlier (or the same) deadline; its future
        fails with DeadlinePassed if no worker takes it before `deadline.at`."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(DeadlinePassed("the LLM lane is closed"))
                return future
            self._queue.put((deadline.at, next(self._arrival), _Job(run, deadline, future, label)))
            if self._live < self.workers:
                self._live += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._live}", daemon=True).start()
        return future

    def run(self, run: Callable[[], T], deadline: Deadline, *, label: str = "",
            on_late: Callable[[Future[T]], None] | None = None) -> T:
        """Submit `run` and wait for its result until `deadline.at`. Past it, raise DeadlinePassed; the job,
        if running, goes on until its cutoff, and `on_late` is called with its future when it ends."""
        future = self.submit(run, deadline, label)
        try:
            return future.result(timeout=max(0.0, deadline.left()))
        except TimeoutError:
            if future.cancel():  # still queued: it will never run
                raise DeadlinePassed("it was still waiting behind other incidents' LLM work") from None
            if on_late is not None:
                future.add_done_callback(on_late)
            raise DeadlinePassed("the model was still answering") from None

    def queued(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Stop taking jobs; the workers end once the queue is empty (queued jobs fail as DeadlinePassed)."""
        with self._lock:
            self._closed = True
            for _ in range(self._live):
                self._queue.put((math.inf, next(self._arrival), _STOP))

    # -- the workers ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                _, _, job = self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:  # submit puts under this lock: an empty queue here stays seen by it
                    if self._queue.empty():
                        self._live -= 1
                        return
                continue
            if job is _STOP:
                return
            self._take(job)

    def _take(self, job: _Job) -> None:
        if self._closed:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(DeadlinePassed("the LLM lane is closed"))
            return
        if job.deadline.passed():
            self._drop()
            log.info("LLM job %s dropped: its deadline passed while it waited in the queue", job.label or "?")
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(DeadlinePassed("the deadline passed while the job waited in the queue"))
            return
        if not job.future.set_running_or_notify_cancel():  # the caller gave up on it while it was queued
            self._drop()
            return
        try:
            result = job.run()
        except BaseException as exc:  # the caller (or the late callback) decides what an error means
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _drop(self) -> None:
        metrics.DROPPED.inc()
        with self._lock:
            self.dropped += 1
