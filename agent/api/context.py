"""What the HTTP API needs from the running service, and nothing more.

`rtem run` builds one `ApiContext` over its own components; the API reads the SQLite store through
its own read-only connections (per request, in worker threads) and writes only through the
service's audit log, ledger, rules reloader and bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bus import PublishReport
from rules import Topology

from ..audit import AuditLog
from ..incident import Policy
from ..ledger import Ledger
from ..store import IncidentStore
from ..tokens import TokenStore

Chat = Callable[..., Any]  # (question, store, audit, incident_id, *, visible) -> chat.Answer


@dataclass
class ApiContext:
    db_path: Path
    topology: Topology
    audit: AuditLog
    ledger: Ledger
    tokens: TokenStore
    publish: Callable[[list[bytes]], Awaitable[PublishReport]]
    chat: Chat
    reloader: Any = None  # RulesReloader: status and reload; None where rules are not reloadable
    ready: Callable[[], bool] = lambda: True
    max_body_bytes: int = 1024 * 1024
    policy: Policy = Policy()  # approval lifetime, as the service judges it

    @contextmanager
    def store(self) -> Iterator[IncidentStore]:
        """A read-only view of the store on its own connection, for one request."""
        store = IncidentStore(self.db_path, readonly=True)
        try:
            yield store
        finally:
            store.close()
