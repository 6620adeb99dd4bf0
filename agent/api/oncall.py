"""On-call actions over HTTP: `POST /api/v1/incidents/{id}/ack | assign | comment | resolve | reopen`, and
`POST /api/v1/incidents/{id}/confirm` (a confirmed cause, through `agent.confirm.confirm`).

Each goes through `agent.oncall.act`, as the CLI's and the console's do. Roles operator, approver and
admin may act (viewers and rule authors read); a scoped token acts only on incidents in its scope, and
one outside it is answered exactly as an incident that does not exist (404), the refusal audited as
`access.denied`. Refusals are JSON: 404 unknown, 409 not now (closed, not closed, acknowledged, changed
meanwhile), 422 missing text.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..confirm import confirm
from ..incident import ConfirmRefused, OnCallRefused
from ..oncall import OnCallAction, act
from ..store import IncidentStore
from ..tokens import Principal
from .auth import ApiError, Visibility, context, deny, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)
ONCALL_ROLES = frozenset({"operator", "approver", "admin"})  # people who may be on call


class Ack(BaseModel):
    pass


class Assign(BaseModel):
    to: str = Field(min_length=1, max_length=128)


class Note(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class Reason(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class Cause(BaseModel):
    cause: str = Field(min_length=1, max_length=256)
    fault_type: str | None = Field(None, max_length=256)
    note: str = Field("", max_length=4000)


async def on_call(request: Request, who: Principal = Depends(require("read"))) -> Principal:
    """The caller, if its role may act on call; 403 (audited) otherwise."""
    if who.role not in ONCALL_ROLES:
        raise deny(context(request), request, 403, f"role {who.role} may not act on incidents "
                   f"(one of {', '.join(sorted(ONCALL_ROLES))} may)", who)
    return who


OnCall = Depends(on_call)


@router.post("/incidents/{incident_id}/ack")
async def acknowledge(incident_id: str, request: Request, body: Ack | None = None, who: Principal = OnCall):
    return await _act(request, incident_id, OnCallAction.ACK, "", who)


@router.post("/incidents/{incident_id}/assign")
async def assign(incident_id: str, body: Assign, request: Request, who: Principal = OnCall):
    return await _act(request, incident_id, OnCallAction.ASSIGN, body.to, who)


@router.post("/incidents/{incident_id}/comment")
async def comment(incident_id: str, body: Note, request: Request, who: Principal = OnCall):
    return await _act(request, incident_id, OnCallAction.COMMENT, body.text, who)


@router.post("/incidents/{incident_id}/resolve")
async def resolve(incident_id: str, body: Reason, request: Request, who: Principal = OnCall):
    return await _act(request, incident_id, OnCallAction.RESOLVE, body.reason, who)


@router.post("/incidents/{incident_id}/reopen")
async def reopen(incident_id: str, body: Reason, request: Request, who: Principal = OnCall):
    return await _act(request, incident_id, OnCallAction.REOPEN, body.reason, who)


@router.post("/incidents/{incident_id}/confirm")
async def confirm_cause(incident_id: str, body: Cause, request: Request, who: Principal = OnCall):
    """Keep a confirmed cause (`cause.confirmed`, agent/confirm.py); 422 names the candidates."""
    ctx = context(request)
    visible = Visibility(ctx, who)

    def keep():
        with ctx.store() as store:  # only the audit log is written
            return confirm(store, ctx.audit, incident_id, body.cause, by=who.name, via="api",
                           fault_type=body.fault_type, note=body.note, topology=ctx.topology, role=who.role,
                           visible=visible)

    try:
        confirmed = await run_in_threadpool(keep)
    except ConfirmRefused as refused:
        raise (visible.denied(request, 404, refused.message)
               or ApiError(refused.kind.http_status, refused.message, detail=refused.detail)) from None
    return {"record": "cause.confirmed", **confirmed.to_dict()}


async def _act(request: Request, incident_id: str, action: OnCallAction, text: str, who: Principal) -> dict[str, Any]:
    ctx = context(request)
    store = _writer(request)
    visible = Visibility(ctx, who)

    def keep():
        return act(store, ctx.audit, incident_id, action, by=who.name, via="api", text=text, role=who.role,
                   visible=visible)

    try:
        acted = await run_in_threadpool(keep)
    except OnCallRefused as refused:
        raise (visible.denied(request, 404, refused.message)
               or ApiError(refused.kind.http_status, refused.message, detail=refused.detail)) from None
    return acted.to_dict()


def _writer(request: Request) -> IncidentStore:
    """The store on the service's writable database (the ledger's; the API's own reader is read-only),
    made once per app."""
    store = getattr(request.app.state, "oncall_store", None)
    if store is None:
        store = request.app.state.oncall_store = IncidentStore(context(request).ledger.db)
    return store
