"""Who is calling, and may they: the token in the request, its role, and refusals in the audit log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from ..tokens import Principal
from .context import ApiContext

COOKIE = "rtem_token"


class ApiError(Exception):
    """An error a client gets as JSON `{"error": ..., "detail": ...}` with this status."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def context(request: Request) -> ApiContext:
    return request.app.state.ctx


def token_of(request: Request) -> str | None:
    """The request's token: the bearer token, else the console's cookie."""
    return bearer_of(request) or request.cookies.get(COOKIE)


def bearer_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def deny(ctx: ApiContext, request: Request, status: int, reason: str, who: Principal | None,
         answer: str | None = None) -> ApiError:
    """Record a refused attempt, then return the error to raise. `answer` is what the caller is told when
    it must not learn the reason (an incident outside its scope answers as one that does not exist)."""
    ctx.audit.append("access.denied", node="api",
                     inputs={"token": who.name if who else "anonymous", "role": who.role if who else None,
                             "method": request.method, "path": request.url.path},
                     decision={"status": status}, reasons=[reason])
    headers = {"WWW-Authenticate": 'Bearer realm="rtem"'} if status == 401 else None
    return ApiError(status, answer or reason, headers=headers)


def require(permission: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal if its role has `permission`; 401/403 otherwise."""

    # async: a token lookup is one indexed SQLite read, cheaper on the event loop than a hop to a thread
    async def check(request: Request) -> Principal:
        ctx = context(request)
        token = token_of(request)
        who = ctx.tokens.authenticate(token)
        if who is None:
            reason = "no token: send `Authorization: Bearer rtem_…` (rtem tokens create)" if not token \
                else "unknown or revoked token"
            raise deny(ctx, request, 401, reason, None)
        if not who.may(permission):
            raise deny(ctx, request, 403, f"role {who.role} may not {permission}", who)
        request.state.principal = who
        return who

    check.__name__ = f"require_{permission}"
    return check


class Visibility:
    """`visible(row)` for the core's decisions (approvals, on-call actions): whether `who` may see the
    incident. It remembers what it hid, so that a refusal about a hidden incident is answered exactly as
    for one that does not exist, and audited as a denial (`denied`)."""

    def __init__(self, ctx: ApiContext, who: Principal):
        self.ctx = ctx
        self.who = who
        self.hidden: list[str] = []

    def __call__(self, row: dict[str, Any]) -> bool:
        if self.who.sees(row, self.ctx.topology):
            return True
        self.hidden.append(row["id"])
        return False

    def denied(self, request: Request, status: int, answer: str) -> ApiError | None:
        """The error for a refusal the core gave, when it was about an incident this hid; else None."""
        if not self.hidden:
            return None
        return deny(self.ctx, request, status, f"incident {self.hidden[0]} is outside the scope of token "
                    f"{self.who.name}", self.who, answer=answer)
