"""The FastAPI application: routes, the console, limits, and errors that never leak a stack trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from . import dlq, ingest, routes, topology
from . import oncall  # on-call actions (agent/api/oncall.py)
from . import learning  # what was learned from confirmed causes, and forgetting it
from .auth import ApiError, require
from .browser import CrossSiteCheck, SecurityHeaders, security_headers
from .context import ApiContext

log = logging.getLogger("rtem.api")


def create_app(ctx: ApiContext) -> FastAPI:
    # No /docs: Swagger UI loads from a CDN, and the console must work offline; /openapi.json stays.
    app = FastAPI(title="rtem", version=__version__, docs_url=None, redoc_url=None,
                  description="rtem's HTTP API: incidents, decisions, approvals, chat, reports, rules, ingest. "
                              "Send `Authorization: Bearer rtem_…` (rtem tokens create). See docs/api.md.")
    app.state.ctx = ctx
    app.add_middleware(BodyLimit, max_bytes=ctx.max_body_bytes)
    app.add_middleware(CrossSiteCheck)
    app.add_middleware(SecurityHeaders)  # the last added is the outermost: its headers go on every answer
    app.include_router(routes.router)
    app.include_router(ingest.router)
    app.include_router(dlq.router)
    app.include_router(topology.router)
    app.include_router(oncall.router)  # ack, assign, comment, resolve, reopen
    app.include_router(learning.router)
    _add_probes(app)
    _add_error_handlers(app)
    try:
        from .console import mount_console
    except ImportError:  # pragma: no cover - the console ships with the package
        log.warning("web console not available")
    else:
        mount_console(app)
    return app


def _add_probes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, bool]:
        """The process serves (no token needed, for load balancers and kubelets)."""
        return {"ok": True}

    @app.get("/readyz", tags=["probes"])
    def readyz(request: Request) -> JSONResponse:
        """The bus is connected and, on the leader, the consumer runs; says whether this worker leads or
        stands by (no token needed)."""
        ctx = request.app.state.ctx
        ready = ctx.ready()
        return JSONResponse({"ready": ready, "role": ctx.role()}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["probes"], dependencies=[Depends(require("read"))])
    def metrics() -> Response:
        """Prometheus metrics (a viewer token: scrape with `authorization.credentials`)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        body = {"error": exc.error}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own errors (unknown path, wrong method, a body that is not JSON) in our shape
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                  for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        # This handler answers outside the middleware, so it adds the security headers itself.
        return JSONResponse({"error": "internal error; the service log has the details",
                             "request_id": request_id}, status_code=500, headers=security_headers(request.url.path))


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length and while streaming (chunked bodies)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass
