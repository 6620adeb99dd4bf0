"""Request bodies read as JSON the service can keep, on every API route.

The route class below gives pydantic bodies (sign-in, decisions, chat) the reader the ingest endpoints
use, `bus.loads_json`: NaN, infinities, lone surrogates, huge integers and deep nesting are a 400 that
names the problem, not a 500 when the answer is encoded nor a value republished as non-standard JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from bus import InvalidJSON, loads_json

__all__ = ["StrictJsonRoute"]


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))
        return strict


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_json(await self.body())
            except InvalidJSON as exc:
                # HTTPException, because FastAPI turns any other error while reading a body into a bare 400
                raise HTTPException(400, f"the body is {exc}") from None
        return self._json
