"""What the HTTP API needs from the running service, and nothing more.

`rtem run` builds one `ApiContext` over its own components; the API reads the store through a
read-only database of its own (`reader`: per-thread connections in the request threads, never the
service's) and writes only through the service's audit log, ledger, rules reloader and bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from bus import PublishReport
from rules import Topology

from ..audit import AuditLog
from ..db import Database
from ..dlq import DeadLetterQueue
from ..incident import Policy
from ..learning import LearningCache
from ..ledger import Ledger
from ..store import IncidentStore
from ..tokens import TokenStore
from ..topology_reload import TopologySource

Chat = Callable[..., Any]  # (question, store, audit, incident_id, *, visible) -> chat.Answer


@dataclass
class ApiContext:
    reader: Database  # read-only, on the service's database
    topologies: TopologySource  # the service's: reloads and discovery swap what current() gives
    audit: AuditLog
    ledger: Ledger
    tokens: TokenStore
    publish: Callable[[list[bytes]], Awaitable[PublishReport]]
    chat: Chat
    reloader: Any = None  # RulesReloader: status and reload; None where rules are not reloadable
    ready: Callable[[], bool] = lambda: True
    role: Callable[[], str] = lambda: "leader"  # or "standby": another worker consumes (docs/deployment.md)
    max_body_bytes: int = 1024 * 1024
    policy: Policy = Policy()  # approval lifetime, as the service judges it
    dead_letters: DeadLetterQueue | None = None  # the DLQ over the service's bus (agent/dlq.py)
    # examples and fitted models, the graph's own where it serves one: `GET /api/v1/learning` refits nothing
    # that a diagnosis (or the last request) already fitted
    learning: LearningCache = field(default_factory=LearningCache)

    def __post_init__(self) -> None:
        # One view for every request, so its schema is checked once, not per request; it keeps no
        # state of its own (each request thread uses its own connection of the reader's).
        self._store = IncidentStore(self.reader)

    @property
    def topology(self) -> Topology:
        """The topology in force now, for scopes and views."""
        return self.topologies.current()

    @contextmanager
    def store(self) -> Iterator[IncidentStore]:
        """The read-only view of the store, for one request (its connections are the reader's)."""
        yield self._store
