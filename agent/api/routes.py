"""Incidents, decisions, audit records, approvals, chat, reports and rules, each behind its role."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..approvals import decide
from ..confirm import confirmed_of
from ..deciders import topology_gaps
from ..incident import DecisionRefused, Refusal
from ..oncall import state_of
from ..report import build_report
from ..tokens import ROLES, Principal
from .auth import ApiError, COOKIE, Visibility, context, deny, require
from .body import StrictJsonRoute

router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)
Reader = Depends(require("read"))
MAX_SEQ = 2**63 - 1  # audit seqs are SQLite integers
ADMIN_ONLY_KINDS = frozenset({"access.denied"})  # who was refused what: other tokens' names, other incidents' ids


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
    row = _visible_incident(request, incident_id, who)
    audit = context(request).audit
    confirmed = confirmed_of(audit, row["id"])  # a person's word beside rtem's ranking (agent/confirm.py)
    unlisted, described = topology_gaps(audit, row["id"])  # what the latest ranking could not weigh, or weighed
    return {**incident_view(row), "oncall": state_of(audit, row["id"]).to_dict(),  # by the events' word alone
            "confirmed": confirmed.to_dict() if confirmed else None, "unlisted": unlisted, "described": described}


@router.get("/incidents/{incident_id}/decisions")
def decisions(incident_id: str, request: Request, who: Principal = Reader):
    row = _visible_incident(request, incident_id, who)
    records = context(request).audit.records(incident_id=row["id"])
    return {"records": [r.model_dump(mode="json") for r in records]}


@router.get("/audit")
def audit(request: Request, incident: str | None = Query(None, max_length=128),
          kind: str | None = Query(None, max_length=64), since_seq: int = Query(0, ge=0, le=MAX_SEQ),
          limit: int = Query(200, ge=1, le=1000), who: Principal = Reader):
    """Audit records the caller may see: of incidents in its scope, and records of no incident except
    access denials (admins only) and breakers on targets outside its scope."""
    ctx = context(request)
    if incident is not None:
        incident = _visible_incident(request, incident, who)["id"]
    if kind in ADMIN_ONLY_KINDS and not who.may("admin"):
        return {"records": []}
    with ctx.store() as store:
        visible = _visibility(store, ctx, who)
        shown: list = []
        after = since_seq
        while len(shown) < limit:  # page through, so a filtered caller never loads the whole log at once
            page = ctx.audit.records(incident_id=incident, kind=kind, since_seq=after, limit=limit)
            shown += [r for r in page if _shows(r, who, ctx, visible)]
            if len(page) < limit:
                break
            after = page[-1].seq
    return {"records": [r.model_dump(mode="json") for r in shown[:limit]]}


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


def _shows(record, who: Principal, ctx, visible) -> bool:
    if record.incident_id is not None:
        return visible(record.incident_id)
    if record.kind in ADMIN_ONLY_KINDS:
        return who.may("admin")
    target = (record.inputs or {}).get("target")
    return not isinstance(target, str) or who.covers(target, ctx.topology)


def _visibility(store, ctx, who: Principal):
    if not who.scoped:
        return lambda _incident_id: True
    seen = {r["id"] for r in store.incidents(include_merged=True) if who.sees(r, ctx.topology)}
    return seen.__contains__


async def _decide(request: Request, incident_id: str, index: int, approve: bool, reason: str,
                  who: Principal) -> dict[str, Any]:
    """`agent.approvals.decide`, as the CLI calls it; a refusal by scope or role is audited as denied.
    An incident outside the caller's scope is answered exactly as one that does not exist."""
    ctx = context(request)
    visible = Visibility(ctx, who)

    def authorize(action):
        if not who.covers(action.target, ctx.topology):
            return "out_of_scope", f"the scope of token {who.name} does not cover {action.target}"
        if action.approver_role and who.role not in (action.approver_role, "admin"):
            return "wrong_role", f"action {action.index} ({action.type}) needs the role {action.approver_role}"
        return None

    with ctx.store() as store:
        try:
            decided = decide(store, ctx.ledger, ctx.audit, incident_id, index, approve=approve, by=who.name,
                             reason=reason, via="api", role=who.role, policy=ctx.policy, visible=visible,
                             authorize=authorize)
        except DecisionRefused as refused:
            hidden = visible.denied(request, refused.kind.http_status, refused.message)
            if hidden is not None:
                raise hidden from None
            if refused.kind in (Refusal.OUT_OF_SCOPE, Refusal.WRONG_ROLE):
                raise deny(ctx, request, refused.kind.http_status, refused.message, who) from None
            raise ApiError(refused.kind.http_status, refused.message, detail=refused.detail) from None
    return {"incident": decided.incident_id, "action": index, "decision": decided.approval.decision,
            "by": who.name}