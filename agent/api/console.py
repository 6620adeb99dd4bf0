"""The web console: static HTML shells and assets, served from the API's own app.

Pages hold no data and need no token to fetch; each one's script asks `GET /api/v1/whoami` first and
goes to /login on a 401, then reads everything else from the JSON API in the browser. Keeping the
console to files (no templates, no build step) means it works offline and cannot leak data into HTML.
"""

from __future__ import annotations

from pathlib import Path

import fastapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "mount_console", "router"]

STATIC = Path(__file__).resolve().parent / "static"
PAGES = STATIC / "pages"

router = fastapi.APIRouter(include_in_schema=False)


def mount_console(app: fastapi.FastAPI) -> None:
    """Serve the console's pages and its assets under /static from `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _page(name: str) -> FileResponse:
    # no-cache: the browser revalidates, so a new console version shows up on the next load
    return FileResponse(PAGES / f"{name}.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/login")
def login_page() -> FileResponse:
    return _page("login")


@router.get("/")
def incidents_page() -> FileResponse:
    return _page("incidents")


@router.get("/incidents/{incident_id}")
def incident_page(incident_id: str) -> FileResponse:
    return _page("incident")


@router.get("/chat")
def chat_page() -> FileResponse:
    return _page("chat")


@router.get("/rules")
def rules_page() -> FileResponse:
    return _page("rules")


@router.get("/reports/{incident_id}")
def report_page(incident_id: str) -> FileResponse:
    return _page("report")
