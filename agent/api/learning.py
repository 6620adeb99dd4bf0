"""What rtem learned from confirmed causes, over HTTP: `GET /api/v1/learning` (as `rtem learn status --json`)
and `POST /api/v1/learning/reset` (as `rtem learn reset`, a `learn.reset` record naming the token).

Learning is fitted on every confirmed incident, so what it says (entity names, counts) spans every
incident: a scoped token may not read it (403, audited as `access.denied`), any unscoped token may.
Forgetting changes how every later incident is ranked, so only admins may reset.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..learning import reset, status
from ..tokens import Principal
from .auth import context, deny, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)


class Forget(BaseModel):
    note: str = Field("", max_length=2000)


@router.get("/learning")
async def learning(request: Request, who: Principal = Depends(require("read"))) -> dict[str, Any]:
    """Confirmations, the incidents learned from, the say against the cold start, the features that weigh
    most in words, and how often rtem had ranked the confirmed cause first."""
    ctx = context(request)
    if who.scoped:
        raise deny(ctx, request, 403, f"learning spans every incident; token {who.name} is scoped", who)

    def read() -> dict[str, Any]:
        with ctx.store() as store:
            return status(store, ctx.audit, ctx.topology, cache=ctx.learning)
    return await run_in_threadpool(read)


@router.post("/learning/reset")
async def forget(request: Request, body: Forget | None = None,
                 who: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Forget what was learned (confirmations stay): incidents diagnosed from now on learn only from
    confirmations made after this record."""
    ctx = context(request)
    record = await run_in_threadpool(reset, ctx.audit, by=who.name, via="api", note=body.note if body else "")
    return {"record": record.kind, "seq": record.seq, "by": who.name, **record.decision}
