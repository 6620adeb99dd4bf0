"""API tokens and roles: who may call what, and over which part of the system.

A token is `rtem_` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored (a secret
that long needs no slow hash: nothing can be guessed from the digest). Tokens live in the service's
database (its SQLite file, or PostgreSQL), so `rtem tokens create` on that database takes effect at the
next request.
"""

from __future__ import annotations

import hashlib
import json
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rules import Topology

from .db import Database, Migration, Schema, adopt

__all__ = ["ROLES", "TOKENS_SCHEMA", "Principal", "TokenError", "TokenStore", "allows"]

# What each role may do. `read`: incidents, decisions, audit, reports, rules status, metrics;
# `ask`: chat; `ingest`: events and Alertmanager payloads; `decide`: approve or reject actions;
# `rules`: reload rules; `admin`: also read access denials. docs/api.md has the table (a test keeps them
# equal). An approver does not ingest: it is a person deciding on actions, and events come from producers
# with operator tokens, so one stolen person's token cannot both feed incidents and approve their actions.
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "ask", "ingest"}),
    "approver": frozenset({"read", "ask", "decide"}),
    "rule_author": frozenset({"read", "ask", "rules"}),
    "admin": frozenset({"read", "ask", "ingest", "decide", "rules", "admin"}),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TABLE = """CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, services TEXT NOT NULL,
    labels TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT, revoked_at TEXT)"""

TOKENS_SCHEMA = Schema("tokens", (Migration(1, "API tokens", sqlite=(_TABLE,), postgres=(_TABLE,)),))


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """The caller a token stands for: its name (recorded with every decision), role and scope."""

    name: str
    role: str
    services: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def may(self, permission: str) -> bool:
        return allows(self.role, permission)

    @property
    def scoped(self) -> bool:
        return bool(self.services or self.labels)

    def covers(self, entity: str, topology: Topology) -> bool:
        """Whether the scope reaches one entity: named itself, its service named, or its labels match."""
        if not self.scoped:
            return True
        if entity in self.services or any(s in self.services for s in topology.targets(entity, "instance_of")):
            return True
        known = topology.by_id.get(entity)
        labels = known.labels if known is not None else {}
        return bool(self.labels) and all(labels.get(k) == v for k, v in self.labels.items())

    def sees(self, incident: dict[str, Any], topology: Topology) -> bool:
        """A scoped token sees an incident when its scope covers at least one of its entities."""
        return not self.scoped or any(self.covers(e, topology) for e in incident.get("entities") or [])

    def scope(self) -> dict[str, Any]:
        return {"services": list(self.services), "labels": dict(self.labels)}


def allows(role: str, permission: str) -> bool:
    return permission in ROLES.get(role, frozenset())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TokenStore:
    def __init__(self, where: Database | str | Path):
        """`where` is a database already open (the store then shares it and does not close it), a
        `postgresql://` URL or a SQLite file."""
        self.db, self._owns_db = adopt(where, TOKENS_SCHEMA)

    def create(self, name: str, role: str, *, services: Iterable[str] = (), labels: dict[str, str] | None = None,
               by: str = "") -> tuple[str, dict[str, Any]]:
        """A new token; returns its plaintext (shown once, never stored) and its description."""
        if not _NAME.match(name):
            raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
        if role not in ROLES:
            raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")

        token = "rtem_" + secrets.token_urlsafe(32)
        with self.db.write() as conn:
            cursor = conn.execute("INSERT INTO api_tokens (name, role, digest, services, labels, created_at,"
                                  " created_by) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                                  [name, role, _digest(token), json.dumps(sorted(set(services))),
                                   json.dumps(labels or {}), _now(), by])
        if cursor.rowcount != 1:
            raise TokenError(f"a token named {name!r} exists; revoke it first or pick another name")
        return token, self.describe(name)

    def revoke(self, name: str) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute("UPDATE api_tokens SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
                                  [_now(), name])
        return cursor.rowcount > 0

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of a live token, or None (unknown, malformed or revoked)."""
        if not token or not token.startswith("rtem_") or len(token) > 128:
            return None
        digest = _digest(token)
        row = self.db.connection().execute("SELECT name, role, digest, services, labels FROM api_tokens"
                                           " WHERE digest=? AND revoked_at IS NULL", [digest]).fetchone()
        if row is None or not hmac.compare_digest(row[2], digest):
            return None

        return Principal(row[0], row[1], tuple(json.loads(row[3])), json.loads(row[4]))

    def describe(self, name: str) -> dict[str, Any]:
        return next((t for t in self.list(include_revoked=True) if t["name"] == name), {})

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        rows = self.db.connection().execute("SELECT name, role, services, labels, created_at, created_by, revoked_at"
                                            " FROM api_tokens ORDER BY created_at, name").fetchall()
        return [{"name": r[0], "role": r[1], "services": json.loads(r[2]), "labels": json.loads(r[3]),
                 "created_at": r[4], "created_by": r[5], "revoked_at": r[6]}
                for r in rows if include_revoked or r[6] is None]

    def close(self) -> None:
        """Close every thread's connection, if the store opened its database."""
        if self._owns_db:
            self.db.close()
