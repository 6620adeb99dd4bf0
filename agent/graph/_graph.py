"""The compiled graph and its checkpointer (SQLite, or PostgreSQL for several workers): one LangGraph
thread per incident."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from .. import incident as core
from ..db import is_postgres_url
from ..telemetry import tracer
from ._deps import Deps, IncidentState, plan_of
from ._nodes import approve, close, diagnose, escalate, execute, gather_context, guard, propose, verify


# Any fixed number: the advisory lock around making the checkpoint tables.
_SETUP_LOCK = 0x72746563  # "rtec"


def _after_guard(state: IncidentState) -> str:
    return "close" if state.get("dry_run", True) else "execute"


def _entry(state: IncidentState) -> str:
    return "verify" if state.get("status") == "verifying" else "gather_context"


def _after_verify(state: IncidentState) -> str:
    status = state.get("status")
    return "escalate" if status == "escalated" else "close" if status == "resolved" else END


def _next(state: IncidentState) -> str:
    """After a step or an approval pass: run what can run, else wait for people, else verify."""
    actions = plan_of(state)
    if state.get("saga"):
        return "verify"
    if core.next_runnable(actions) is not None:
        return "execute"
    return "approve" if core.waiting(actions) else "verify"


def build_graph():
    graph = StateGraph(IncidentState, context_schema=Deps)
    for name, node in (("gather_context", gather_context), ("diagnose", diagnose), ("propose", propose),
                       ("guard", guard), ("approve", approve), ("execute", execute), ("verify", verify),
                       ("escalate", escalate), ("close", close)):
        graph.add_node(name, node)
    graph.add_conditional_edges(START, _entry, ["gather_context", "verify"])
    graph.add_edge("gather_context", "diagnose")
    graph.add_edge("diagnose", "propose")
    graph.add_edge("propose", "guard")
    graph.add_conditional_edges("guard", _after_guard, ["execute", "close"])
    graph.add_conditional_edges("execute", _next, ["execute", "approve", "verify"])
    graph.add_conditional_edges("approve", _next, ["execute", "approve", "verify"])
    graph.add_conditional_edges("verify", _after_verify, ["escalate", "close", END])
    graph.add_edge("escalate", "close")
    graph.add_edge("close", END)
    return graph


class IncidentGraph:
    """The compiled graph with its checkpointer; one thread per incident.

    `checkpoints` is a SQLite file (LangGraph's AsyncSqliteSaver) or a `postgresql://` URL (its
    AsyncPostgresSaver on a small pool, so a worker survives the server restarting; its tables are
    made under an advisory lock, so workers starting together make them once).

    `run(incident_id)` starts a thread, or re-enters verification of one that is verifying;
    `resume(incident_id)` continues one that waits in an interrupt (for an approval or the kill
    switch). Both return the state and what the thread waits for, if anything.
    """

    def __init__(self, checkpoints: str | Path, deps: Deps):
        self.checkpoints = checkpoints
        self.deps = deps
        self._conn: aiosqlite.Connection | None = None
        self._pool = None
        self.app = None

    async def open(self) -> IncidentGraph:
        if is_postgres_url(self.checkpoints):
            saver = await self._postgres_saver(str(self.checkpoints))
        else:
            self._conn = await aiosqlite.connect(str(self.checkpoints))
            saver = AsyncSqliteSaver(self._conn)
        self.app = build_graph().compile(checkpointer=saver)
        return self

    async def _postgres_saver(self, url: str):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        options = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}  # what the saver needs
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=4, kwargs=options, open=False, name="checkpoints")
        await self._pool.open(wait=True, timeout=10)
        saver = AsyncPostgresSaver(self._pool)
        async with await AsyncConnection.connect(url, autocommit=True) as lock:
            # Try the lock again and again rather than wait in pg_advisory_lock: the saver's setup creates
            # indexes CONCURRENTLY, which waits for every transaction older than it in the database — a
            # worker blocked in pg_advisory_lock is one, so workers starting together on a new database
            # would wait for each other forever.
            while not (await (await lock.execute("SELECT pg_try_advisory_lock(%s)", [_SETUP_LOCK])).fetchone())[0]:
                await asyncio.sleep(0.2)
            try:
                await saver.setup()
            finally:
                await lock.execute("SELECT pg_advisory_unlock(%s)", [_SETUP_LOCK])
        return saver

    async def run(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        with tracer().start_as_current_span("incident.graph", attributes={"rtem.incident": incident_id}):
            await self.app.ainvoke({"incident_id": incident_id}, _config(incident_id), context=self.deps)
        return await self.status(incident_id)

    async def resume(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        await self.app.ainvoke(Command(resume=True), _config(incident_id), context=self.deps)
        return await self.status(incident_id)

    async def proceed(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        """Move a started thread on: resume it if it waits, continue it if a crash cut it short."""
        snapshot = await self.app.aget_state(_config(incident_id))
        if any(task.interrupts for task in snapshot.tasks):
            return await self.resume(incident_id)
        if snapshot.next:
            await self.app.ainvoke(None, _config(incident_id), context=self.deps)
            return await self.status(incident_id)
        return await self.run(incident_id)

    async def status(self, incident_id: str) -> tuple[IncidentState, dict[str, Any] | None]:
        snapshot = await self.app.aget_state(_config(incident_id))
        waiting = None
        for task in snapshot.tasks:
            for pending in task.interrupts:
                waiting = pending.value
        return snapshot.values, waiting

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _config(incident_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": incident_id}}
