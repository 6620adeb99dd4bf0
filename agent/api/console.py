"""The web console: HTML shells and static assets, served from the API's own app.

Pages hold no data and need no token to fetch; each one's script asks `GET /api/v1/whoami` first and
goes to /login on a 401, then reads everything else from the JSON API in the browser. The shells are
Jinja templates over one layout (`templates/base.html`), rendered once with nothing but their title:
no build step, nothing from the internet, and no data can leak into HTML.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi
import jinja2
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "mount_console", "router"]

STATIC = Path(__file__).resolve().parent / "static"
TEMPLATES = Path(__file__).resolve().parent / "templates"
# Each page: its path, its template and its title. The ids in paths are read by the page's script.
PAGES = {"/login": ("login", "Sign in"), "/": ("incidents", "Incidents"),
         "/incidents/{incident_id}": ("incident", "Incident"), "/chat": ("chat", "Chat"), "/rules": ("rules", "Rules"),
         "/learning": ("learning", "Learning"), "/reports/{incident_id}": ("report", "Report")}
_TITLES = dict(PAGES.values())

router = fastapi.APIRouter(include_in_schema=False)


def mount_console(app: fastapi.FastAPI) -> None:
    """Serve the console's pages and its assets under /static from `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _page(name: str) -> HTMLResponse:
    # no-cache: the browser revalidates, so a new console version shows up on the next load
    return HTMLResponse(_render(name), headers={"Cache-Control": "no-cache"})


@lru_cache(maxsize=None)
def _render(name: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template(f"{name}.html").render(page=name, title=_TITLES[name])


def _route(name: str):
    def page() -> HTMLResponse:
        return _page(name)
    page.__name__ = f"{name}_page"
    return page


for _path, (_name, _) in PAGES.items():
    router.add_api_route(_path, _route(_name), methods=["GET"], response_class=HTMLResponse)
