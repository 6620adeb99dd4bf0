"""What a browser may do with the API: the console's cross-site request check, and the security headers
every response carries.

`SameSite=Strict` does not stop a page on another port of the same host (the same *site*) from making
the browser send the console's cookie. So an unsafe request (POST, PUT, PATCH, DELETE) that the cookie
would authenticate, and every sign-in or sign-out, must come from the console itself: an `Origin` that
is this service's own (or, when a browser sends no Origin, `Sec-Fetch-Site: same-origin`), and the
header `X-Rtem-Console: 1`, which a form cannot send and a cross-origin script cannot send without a
CORS preflight this service never grants. Requests with `Authorization: Bearer` are not affected: a
browser never adds that header by itself. docs/security.md has the model.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import COOKIE, bearer_of, deny

__all__ = ["CONSOLE_HEADER", "CrossSiteCheck", "SecurityHeaders", "security_headers"]

CONSOLE_HEADER = "x-rtem-console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_PATH = "/api/v1/session"

# The console is same-origin scripts (ES modules) and a stylesheet; nothing inline, nothing from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The report page shows the API's self-contained report (its own <style>) in a sandboxed srcdoc frame,
# which inherits this page's policy: inline styles are allowed there, scripts still are not.
REPORT_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# The report as the API serves it, opened directly: styles only, no scripts, an origin of its own.
REPORT_DOCUMENT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
                       "form-action 'none'; frame-ancestors 'none'; sandbox")
HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Opener-Policy": "same-origin"}


def security_headers(path: str) -> dict[str, str]:
    """The headers every response to `path` carries."""
    if path.startswith("/reports/"):
        policy = REPORT_CSP
    elif path.startswith("/api/v1/incidents/") and path.endswith("/report"):
        policy = REPORT_DOCUMENT_CSP
    else:
        policy = CSP
    return {"Content-Security-Policy": policy, **HEADERS}


class SecurityHeaders:
    """Add `security_headers` to every HTTP response (pages, JSON, static files, 404s)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CrossSiteCheck:
    """Refuse (403, audited) a cookie-authenticated unsafe request that does not come from the console."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            request = Request(scope)
            by_cookie = COOKIE in request.cookies and bearer_of(request) is None
            if by_cookie or scope["path"] == SESSION_PATH:
                problem = cross_site_problem(request)
                if problem:
                    ctx = scope["app"].state.ctx
                    who = ctx.tokens.authenticate(request.cookies.get(COOKIE)) if by_cookie else None
                    refused = deny(ctx, request, 403, problem, who)
                    response = JSONResponse({"error": refused.error}, status_code=403)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


def cross_site_problem(request: Request) -> str | None:
    """Why this request may not have come from the console itself, or None when it did."""
    headers: Headers = request.headers
    origin = headers.get("origin")
    if origin is not None:
        if origin != own_origin(request):
            return (f"cross-site request refused: Origin {origin} is not this service's "
                    f"{own_origin(request)}; use the console, or send `Authorization: Bearer rtem_…`")
    elif headers.get("sec-fetch-site") != "same-origin":
        return ("cross-site request refused: no Origin and no `Sec-Fetch-Site: same-origin`; use the console, "
                "or send `Authorization: Bearer rtem_…`")
    if headers.get(CONSOLE_HEADER) != "1":
        return ("cross-site request refused: the console's `X-Rtem-Console: 1` header is missing; use the console, "
                "or send `Authorization: Bearer rtem_…`")
    return None


def own_origin(request: Request) -> str:
    """This service's origin as the browser sees it: the request's scheme (uvicorn takes it from a trusted
    proxy's X-Forwarded-Proto) and its Host header, with a default port dropped as browsers drop it."""
    scheme = request.url.scheme
    host = request.headers.get("host", "").lower()
    parts = urlsplit(f"//{host}")
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        port = parts.port
    except ValueError:
        return "invalid"
    hostname = host.rsplit(":", 1)[0] if port is not None else host
    return f"{scheme}://{hostname}" if port in (None, default) else f"{scheme}://{hostname}:{port}"
