"""The execution ledger, approvals and the kill switch: the state that makes effects happen once.

A step's idempotency key is (incident, action index, step kind). The ledger records the step as
`started` before the call and `succeeded`/`failed` after it, in the same database as the store.
A step found `succeeded` is never run again; one found `started` (rtem died during the call) is sent
again with the same key, and the target, which has seen the key, answers without acting twice.

Several workers may share one PostgreSQL database, so a write that depends on what is already there
is one statement that cannot lose a race (`INSERT ... ON CONFLICT`), and `start` reads its row back
in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .db import Connection, Database, Migration, Schema, adopt
from .incident import Approval

_TABLES = (
    """CREATE TABLE IF NOT EXISTS executions (
        key TEXT PRIMARY KEY, incident_id TEXT, action_index INTEGER, kind TEXT, action TEXT, target TEXT,
        params TEXT, status TEXT, outcome TEXT, attempts INTEGER DEFAULT 0, started_at TEXT, finished_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS executions_incident ON executions (incident_id)",
    """CREATE TABLE IF NOT EXISTS approvals (
        incident_id TEXT, action_index INTEGER, decision TEXT, by TEXT, reason TEXT, at TEXT,
        PRIMARY KEY (incident_id, action_index))""",
    "CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT, by TEXT, at TEXT)",
)

LEDGER_SCHEMA = Schema("ledger", (
    Migration(1, "executions, approvals and the kill switch", sqlite=_TABLES, postgres=_TABLES),
))


def step_key(incident_id: str, action_index: int, kind: str = "do") -> str:
    """A step's idempotency key; `incident_id` is the incident's ledger scope (`ledger_scope`)."""
    return f"{incident_id}/{action_index}/{kind}"


def ledger_scope(audit, incident_id: str) -> str:
    """The name the ledger keeps an incident's steps and approvals under, per round: the incident's id,
    and after each reopen by a person (`incident.reopened` records) `<id>#r<round>`. A reopened incident
    starts afresh: its steps get new idempotency keys (a target runs them again: the fault is back) and
    its actions new approvals (a decision on the last round's plan does not approve this one)."""
    reopened = len(audit.records(incident_id=incident_id, kind="incident.reopened"))
    return incident_id if reopened == 0 else f"{incident_id}#r{reopened}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Ledger:
    def __init__(self, where: Database | str | Path, *, fence: Callable[[Connection, str], None] | None = None):
        """`where` is a database already open (the ledger then shares it and does not close it), a
        `postgresql://` URL or a SQLite file. `fence(conn, incident_id)`, called inside the transaction
        that starts or finishes a step, refuses it (raises) when this worker no longer owns the incident:
        a worker paused past its lease cannot start an action the incident's new owner drives
        (agent/cluster)."""
        self.fence = fence
        self.db, self._owns_db = adopt(where, LEDGER_SCHEMA)

    # -- executions -------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        return _execution(self.db.connection(), key)

    def start(self, key: str, incident_id: str, action_index: int, kind: str, action: str, target: str,
              params: dict[str, Any]) -> dict[str, Any]:
        """Record the step before its call; returns the row as it now stands (maybe already done).

        One transaction: of workers starting the same step together, one inserts it, and each counts
        its attempt and reads the row with its own count."""
        with self.db.write() as conn:
            if self.fence:
                self.fence(conn, incident_id)
            conn.execute(
                "INSERT INTO executions (key, incident_id, action_index, kind, action, target, params, status,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'started', ?) ON CONFLICT (key) DO NOTHING",
                [key, incident_id, action_index, kind, action, target, json.dumps(params), _now()])
            conn.execute("UPDATE executions SET attempts = attempts + 1 WHERE key=? AND status='started'", [key])
            return _execution(conn, key)

    def finish(self, key: str, ok: bool, outcome: dict[str, Any]) -> None:
        with self.db.write() as conn:
            if self.fence:
                self.fence(conn, key.rsplit("/", 2)[0].split("#", 1)[0])  # step_key's incident, without its round
            conn.execute("UPDATE executions SET status=?, outcome=?, finished_at=? WHERE key=?",
                         ["succeeded" if ok else "failed", json.dumps(outcome), _now(), key])

    # -- approvals --------------------------------------------------------------------------------

    def decide(self, incident_id: str, action_index: int, approve: bool, by: str, reason: str = "",
               at: datetime | None = None) -> Approval | None:
        """Keep the first decision on an action; returns it, or None when one was already kept (a
        decision is never overwritten: see `agent.approvals.decide`)."""
        approval = Approval(decision="approve" if approve else "reject", by=by, reason=reason,
                            at=at or datetime.now(timezone.utc))
        with self.db.write() as conn:
            cursor = conn.execute(
                "INSERT INTO approvals (incident_id, action_index, decision, by, reason, at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id, action_index) DO NOTHING",
                [incident_id, action_index, approval.decision, by, reason, approval.at.isoformat()])
        return approval if cursor.rowcount == 1 else None

    def decisions(self, incident_id: str) -> dict[int, Approval]:
        rows = self.db.connection().execute("SELECT action_index, decision, by, reason, at FROM approvals"
                                            " WHERE incident_id=?", [incident_id]).fetchall()
        return {r[0]: Approval(decision=r[1], by=r[2], reason=r[3] or "", at=datetime.fromisoformat(r[4]))
                for r in rows}

    # -- kill switch ------------------------------------------------------------------------------

    def set_paused(self, paused: bool, by: str) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO control (key, value, by, at) VALUES ('paused', ?, ?, ?) ON CONFLICT (key)"
                         " DO UPDATE SET value = excluded.value, by = excluded.by, at = excluded.at",
                         ["1" if paused else "0", by, _now()])

    def paused(self) -> bool:
        row = self.db.connection().execute("SELECT value FROM control WHERE key='paused'").fetchone()
        return bool(row and row[0] == "1")

    def close(self) -> None:
        """Close every thread's connection, if the ledger opened its database."""
        if self._owns_db:
            self.db.close()


def _execution(conn: Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT key, status, outcome, attempts FROM executions WHERE key=?", [key]).fetchone()
    if row is None:
        return None
    return {"key": row[0], "status": row[1], "outcome": json.loads(row[2]) if row[2] else None, "attempts": row[3]}
