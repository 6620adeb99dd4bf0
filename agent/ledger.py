"""The execution ledger, approvals and the kill switch: the state that makes effects happen once.

A step's idempotency key is (incident, action index, step kind). The ledger records the step as
`started` before the call and `succeeded`/`failed` after it, in the same SQLite file as the store.
A step found `succeeded` is never run again; one found `started` (rtem died during the call) is sent
again with the same key, and the target, which has seen the key, answers without acting twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .files import private_file
from .incident import Approval

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    key TEXT PRIMARY KEY, incident_id TEXT, action_index INTEGER, kind TEXT, action TEXT, target TEXT,
    params TEXT, status TEXT, outcome TEXT, attempts INTEGER DEFAULT 0, started_at TEXT, finished_at TEXT);
CREATE INDEX IF NOT EXISTS executions_incident ON executions (incident_id);
CREATE TABLE IF NOT EXISTS approvals (
    incident_id TEXT, action_index INTEGER, decision TEXT, by TEXT, reason TEXT, at TEXT,
    PRIMARY KEY (incident_id, action_index));
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT, by TEXT, at TEXT);
"""


def step_key(incident_id: str, action_index: int, kind: str = "do") -> str:
    return f"{incident_id}/{action_index}/{kind}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Ledger:
    def __init__(self, path: str | Path):
        self.conn = sqlite3.connect(str(private_file(path)), check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    # -- executions -------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT key, status, outcome, attempts FROM executions WHERE key=?", [key]).fetchone()
        if row is None:
            return None
        return {"key": row[0], "status": row[1], "outcome": json.loads(row[2]) if row[2] else None,
                "attempts": row[3]}

    def start(self, key: str, incident_id: str, action_index: int, kind: str, action: str, target: str,
              params: dict[str, Any]) -> dict[str, Any]:
        """Record the step before its call; returns the row as it now stands (maybe already done)."""
        with self._lock:
            self.conn.execute(
                "INSERT OR IGNORE INTO executions (key, incident_id, action_index, kind, action, target, params,"
                " status, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'started', ?)",
                [key, incident_id, action_index, kind, action, target, json.dumps(params), _now()])
            self.conn.execute("UPDATE executions SET attempts = attempts + 1 WHERE key=? AND status='started'", [key])
        return self.get(key)

    def finish(self, key: str, ok: bool, outcome: dict[str, Any]) -> None:
        with self._lock:
            self.conn.execute("UPDATE executions SET status=?, outcome=?, finished_at=? WHERE key=?",
                              ["succeeded" if ok else "failed", json.dumps(outcome), _now(), key])

    # -- approvals --------------------------------------------------------------------------------

    def decide(self, incident_id: str, action_index: int, approve: bool, by: str, reason: str = "",
               at: datetime | None = None) -> Approval | None:
        """Keep the first decision on an action; returns it, or None when one was already kept (a
        decision is never overwritten: see `agent.approvals.decide`)."""
        approval = Approval(decision="approve" if approve else "reject", by=by, reason=reason,
                            at=at or datetime.now(timezone.utc))
        with self._lock:
            cursor = self.conn.execute("INSERT OR IGNORE INTO approvals VALUES (?, ?, ?, ?, ?, ?)",
                                       [incident_id, action_index, approval.decision, by, reason, approval.at.isoformat()])
        return approval if cursor.rowcount == 1 else None

    def decisions(self, incident_id: str) -> dict[int, Approval]:
        rows = self.conn.execute("SELECT action_index, decision, by, reason, at FROM approvals WHERE incident_id=?",
                                 [incident_id]).fetchall()
        return {r[0]: Approval(decision=r[1], by=r[2], reason=r[3] or "", at=datetime.fromisoformat(r[4]))
                for r in rows}

    # -- kill switch ------------------------------------------------------------------------------

    def set_paused(self, paused: bool, by: str) -> None:
        with self._lock:
            self.conn.execute("INSERT OR REPLACE INTO control VALUES ('paused', ?, ?, ?)",
                              ["1" if paused else "0", by, _now()])

    def paused(self) -> bool:
        row = self.conn.execute("SELECT value FROM control WHERE key='paused'").fetchone()
        return bool(row and row[0] == "1")

    def close(self) -> None:
        self.conn.close()
