"""Incidents, decisions, audit records, approvals, chat, reports and rules, each behind its role."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..approvals import decide
from ..incident import DecisionRefused, Refusal
from ..report import build_report
from ..tokens import ROLES, Principal
from .auth import ApiError, COOKIE, context, deny, require

router = APIRouter(prefix="/api/v1")
Reader = Depends(require("read"))


class Session(BaseModel):
    token: str = Field(min_length=1, max_length=128)


class Decision(BaseModel):
    reason: str = Field("", max_length=2000)


class Question(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    incident: str | None = Field(None, max_length=128)


@router.post("/session", status_code=204, response_class=Response)
def login(body: Session, request: Request) -> Response:
    """Trade a token for the console's cookie (HttpOnly, SameSite=Strict)."""
    ctx = context(request)
    who = ctx.tokens.authenticate(body.token)
    if who is None:
        raise deny(ctx, request, 401, "unknown or revoked token", None)
    response = Response(status_code=204)
    response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    return response


@router.delete("/session", status_code=204, response_class=Response)
def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/whoami")
def whoami(who: Principal = Reader) -> dict[str, Any]:
    return {"name": who.name, "role": who.role, "scope": who.scope(),
            "may": sorted(ROLES[who.role])}


@router.get("/incidents")
def incidents(request: Request, status: str | None = Query(None, max_length=32), who: Principal = Reader):
    ctx = context(request)
    with ctx.store() as store:
        rows = store.incidents(status=status)
    return {"incidents": [incident_view(r) for r in rows if who.sees(r, ctx.topology)]}


@router.get("/incidents/{incident_id}")
def incident(incident_id: str, request: Request, who: Principal = Reader):
    return incident_view(_visible_incident(request, incident_id, who))


@router.get("/incidents/{incident_id}/decisions")
def decisions(incident_id: str, request: Request, who: Principal = Reader):
    row = _visible_incident(request, incident_id, who)
    records = context(request).audit.records(incident_id=row["id"])
    return {"records": [r.model_dump(mode="json") for r in records]}


@router.get("/audit")
def audit(request: Request, incident: str | None = Query(None, max_length=128),
          kind: str | None = Query(None, max_length=64), since_seq: int = Query(0, ge=0),
          limit: int = Query(200, ge=1, le=1000), who: Principal = Reader):
    ctx = context(request)
    if incident is not None:
        incident = _visible_incident(request, incident, who)["id"]
    with ctx.store() as store:
        visible = _visibility(store, ctx, who)
        records = ctx.audit.records(incident_id=incident, kind=kind, since_seq=since_seq,
                                    limit=None if who.scoped else limit)
        shown = [r for r in records if r.incident_id is None or visible(r.incident_id)][:limit]
    return {"records": [r.model_dump(mode="json") for r in shown]}


@router.get("/incidents/{incident_id}/report")
def report(incident_id: str, request: Request, format: Literal["md", "html"] = "md", who: Principal = Reader):
    ctx = context(request)
    row = _visible_incident(request, incident_id, who)
    with ctx.store() as store:
        text = build_report(store, ctx.audit, row["id"]).render(format)
    return Response(text, media_type="text/html" if format == "html" else "text/markdown; charset=utf-8")


@router.post("/incidents/{incident_id}/actions/{index}/approve")
async def approve(incident_id: str, index: int, request: Request, body: Decision | None = None,
                  who: Principal = Depends(require("decide"))):
    return await _decide(request, incident_id, index, True, (body or Decision()).reason, who)


@router.post("/incidents/{incident_id}/actions/{index}/reject")
async def reject(incident_id: str, index: int, request: Request, body: Decision | None = None,
                 who: Principal = Depends(require("decide"))):
    return await _decide(request, incident_id, index, False, (body or Decision()).reason, who)


@router.post("/chat")
async def chat(body: Question, request: Request, who: Principal = Depends(require("ask"))):
    ctx = context(request)

    def ask() -> dict[str, Any]:
        with ctx.store() as store:
            reply = ctx.chat(body.question, store, ctx.audit, body.incident,
                             visible=lambda row: who.sees(row, ctx.topology))
        return reply.to_dict()
    return await run_in_threadpool(ask)


@router.get("/rules")
def rules(request: Request, who: Principal = Reader):
    reloader = context(request).reloader
    if reloader is None:
        raise ApiError(404, "this service has no reloadable rules")
    return reloader.status()


@router.post("/rules/reload")
async def reload_rules(request: Request, who: Principal = Depends(require("rules"))):
    reloader = context(request).reloader
    if reloader is None:
        raise ApiError(404, "this service has no reloadable rules")
    result = await reloader.reload(actor=f"{who.name} (token)", via="api")
    if not result.ok:
        raise ApiError(422, "rules refused; the previous rules stay active",
                       detail=[str(e) for e in result.errors])
    return result.to_dict()


# -- helpers --------------------------------------------------------------------------------------

def incident_view(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "severity", "opened_at", "updated_at", "first_ts", "last_ts", "event_count",
            "entities", "detections", "root_causes", "actions", "resolution", "mttr_s", "merged_into", "versions")
    return {k: row.get(k) for k in keys}


def _visible_incident(request: Request, incident_id: str, who: Principal) -> dict[str, Any]:
    ctx = context(request)
    with ctx.store() as store:
        row = store.incident(incident_id)
    if row is None or not who.sees(row, ctx.topology):  # out of scope reads as absent: nothing leaks
        raise ApiError(404, f"no incident {incident_id!r}")
    return row


def _visibility(store, ctx, who: Principal):
    if not who.scoped:
        return lambda _incident_id: True
    seen = {r["id"] for r in store.incidents(include_merged=True) if who.sees(r, ctx.topology)}
    return seen.__contains__


async def _decide(request: Request, incident_id: str, index: int, approve: bool, reason: str,
                  who: Principal) -> dict[str, Any]:
    """`agent.approvals.decide`, as the CLI calls it; a refusal by scope or role is audited as denied."""
    ctx = context(request)

    def authorize(action):
        if not who.covers(action.target, ctx.topology):
            return "out_of_scope", f"the scope of token {who.name} does not cover {action.target}"
        if action.approver_role and who.role not in (action.approver_role, "admin"):
            return "wrong_role", f"action {action.index} ({action.type}) needs the role {action.approver_role}"
        return None

    with ctx.store() as store:
        try:
            decided = decide(store, ctx.ledger, ctx.audit, incident_id, index, approve=approve, by=who.name,
                             reason=reason, via="api", role=who.role, policy=ctx.policy, authorize=authorize)
        except DecisionRefused as refused:
            if refused.kind in (Refusal.OUT_OF_SCOPE, Refusal.WRONG_ROLE):
                raise deny(ctx, request, refused.kind.http_status, refused.message, who) from None
            raise ApiError(refused.kind.http_status, refused.message, detail=refused.detail) from None
    return {"incident": decided.incident_id, "action": index, "decision": decided.approval.decision,
            "by": who.name}