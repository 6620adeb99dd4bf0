"""The dead-letter queue over HTTP: list, show, redrive, purge (agent/dlq.py does the work).

Dead letters hold producers' raw bytes, which no service scope can filter: reading and redriving need the
`ingest` permission (operator, admin) and an unscoped token; purging needs `admin`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import nats.errors

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..dlq import DeadLetterKind, DeadLetterQueue, DlqError, DlqFilter
from ..tokens import Principal
from .auth import ApiError, context, deny, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1/dlq", route_class=StrictJsonRoute, tags=["dlq"])

MAX_SEQ = 2 ** 63 - 1


class Selection(BaseModel):
    """Which dead letters: `seqs`, or those a filter (`kind`, `reason`, `since`) matches, or `all`."""

    model_config = ConfigDict(extra="forbid")

    seqs: list[int] | None = Field(None, min_length=1, max_length=1000)
    kind: DeadLetterKind | None = None
    reason: str | None = Field(None, min_length=1, max_length=200)
    since: datetime | None = None
    all: bool = False

    @model_validator(mode="after")
    def one_way(self) -> Selection:
        if any(not 1 <= s <= MAX_SEQ for s in self.seqs or ()):
            raise ValueError(f"a seq is a DLQ stream sequence from 1 to {MAX_SEQ}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since needs a time zone (e.g. 2026-01-02T03:04:05Z)")
        ways = [bool(self.seqs), not self.filter().empty, self.all]
        if sum(ways) != 1:
            raise ValueError("select one way: seqs, a filter (kind, reason, since), or all: true")
        return self

    def filter(self) -> DlqFilter:
        return DlqFilter(kind=self.kind, reason=self.reason, since=self.since)


class Redrive(Selection):
    dry_run: bool = False


def dlq_reader(permission: str):
    """`require(permission)`, and an unscoped token: a dead letter belongs to no service a scope could name."""
    check = require(permission)

    async def unscoped(request: Request) -> Principal:
        who = await check(request)
        if who.scoped:
            raise deny(context(request), request, 403, f"token {who.name} is scoped to services or labels; dead "
                       "letters are raw producer data no scope can filter: use an unscoped token", who)
        return who

    return unscoped


Operator = Depends(dlq_reader("ingest"))
Admin = Depends(dlq_reader("admin"))


def queue(request: Request) -> DeadLetterQueue:
    dlq = context(request).dead_letters
    if dlq is None:
        raise ApiError(503, "this service has no bus connection for the DLQ")
    return dlq


@contextlib.contextmanager
def bus_answers():
    """A bus that does not answer is the service's trouble, not the request's: 503, try again (not a 500)."""
    try:
        yield
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        raise ApiError(503, f"the bus did not answer about the DLQ ({type(exc).__name__}: {exc}); try again. A "
                       "redrive or purge cut short is in the audit log as far as it went", headers={"Retry-After": "5"}
                       ) from None


@router.get("")
async def list_dead_letters(request: Request, kind: DeadLetterKind | None = None,
                            reason: str | None = Query(None, max_length=200),
                            since: datetime | None = None, limit: int = Query(100, ge=0, le=1000),
                            who: Principal = Operator) -> dict[str, Any]:
    """Newest first; `total` is every message in the DLQ (`limit=0` for the count alone)."""
    dlq = queue(request)
    if since is not None and since.tzinfo is None:
        raise ApiError(400, "since needs a time zone (e.g. 2026-01-02T03:04:05Z)")
    with bus_answers():
        found = await dlq.find(DlqFilter(kind=kind, reason=reason, since=since), limit)
        total = await dlq.count()
    return {"total": total, "dead_letters": [s.model_dump(mode="json") for s in found]}


@router.get("/{seq}")
async def show_dead_letter(request: Request, seq: int = Path(ge=1, le=MAX_SEQ),
                           who: Principal = Operator) -> dict[str, Any]:
    try:
        with bus_answers():
            return (await queue(request).show(seq)).model_dump(mode="json")
    except DlqError as exc:
        raise ApiError(404, str(exc)) from None


@router.post("/redrive")
async def redrive(body: Redrive, request: Request, who: Principal = Operator) -> dict[str, Any]:
    """Re-check the selected letters; those that pass now go back to EVENTS (unless `dry_run`)."""
    with bus_answers():
        report = await queue(request).redrive(body.seqs, body.filter(), by=who.name, via="api", dry_run=body.dry_run)
    return report.model_dump(mode="json")


@router.post("/purge")
async def purge(body: Selection, request: Request, who: Principal = Admin) -> dict[str, Any]:
    try:
        with bus_answers():
            report = await queue(request).purge(body.seqs, body.filter(), everything=body.all, by=who.name,
                                                via="api")
    except DlqError as exc:
        raise ApiError(400, str(exc)) from None
    return report.model_dump(mode="json")
