"""rtem's HTTP API and web console (FastAPI), served by `rtem run`; docs/api.md, docs/security.md."""

from .app import create_app
from .context import ApiContext

__all__ = ["ApiContext", "create_app"]
