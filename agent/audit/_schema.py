"""The audit log's tables, and the triggers that keep it append-only, as the versioned schema `AUDIT_SCHEMA`.

The rules live in the database, so another process or someone at a SQL prompt meets them too: a record is
never updated; one is deleted only at or below the purge anchor; an insert must extend the head (seq =
head.seq + 1, prev_hash = head.hash) and moves it; the head moves only that way; the anchor moves only
forward, onto a record below the head; neither is deleted or doubled. Someone allowed to drop or disable
triggers can still edit the log: `verify` (with the AUDIT stream's copy) is what catches that.

Version 1 on SQLite is exactly the tables and triggers of logs made before versioned schemas, so such a
file only records its version. On PostgreSQL the same rules are PL/pgSQL trigger functions (with TRUNCATE,
which skips row triggers, refused as well).
"""

from __future__ import annotations

from ..db import Migration, Schema
from ._records import GENESIS

_REFUSED = "audit log is append-only"


def _tables(integer: str) -> tuple[str, ...]:
    # The JSON columns are TEXT on both backends: the stored text is what was hashed (jsonb would reorder it).
    return (
        f"""CREATE TABLE IF NOT EXISTS audit (
             seq {integer} PRIMARY KEY, at TEXT NOT NULL, incident_id TEXT, kind TEXT NOT NULL, node TEXT,
             inputs TEXT, decision TEXT, reasons TEXT, evidence TEXT, versions TEXT, prev_hash TEXT NOT NULL,
             hash TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS audit_incident_id ON audit (incident_id)",
        "CREATE INDEX IF NOT EXISTS audit_kind ON audit (kind)",
        *(statement for table in ("audit_head", "audit_anchor") for statement in (
            f"""CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY CHECK (id = 1), seq {integer} NOT NULL,
                                                    hash TEXT NOT NULL)""",
            f"INSERT INTO {table} (id, seq, hash) SELECT 1, 0, '{GENESIS}' WHERE NOT EXISTS (SELECT 1 FROM {table})")),
    )


_SQLITE_REFUSE = f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END"

_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit {_SQLITE_REFUSE}",
    # A log from before retention refused every delete; this one allows them at or below the anchor.
    "DROP TRIGGER IF EXISTS audit_no_delete",
    f"""CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
          WHEN OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0) {_SQLITE_REFUSE}""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_anchor_forward_only BEFORE UPDATE ON audit_anchor
          WHEN NEW.id IS NOT OLD.id OR NEW.seq <= OLD.seq OR NEW.seq >= (SELECT seq FROM audit_head)
               OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq) {_SQLITE_REFUSE}""",
    f"CREATE TRIGGER IF NOT EXISTS audit_anchor_no_delete BEFORE DELETE ON audit_anchor {_SQLITE_REFUSE}",
    f"""CREATE TRIGGER IF NOT EXISTS audit_anchor_single BEFORE INSERT ON audit_anchor
          WHEN EXISTS (SELECT 1 FROM audit_anchor) {_SQLITE_REFUSE}""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_extends_head BEFORE INSERT ON audit
          WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head) OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head)
          BEGIN SELECT RAISE(ABORT, '{_REFUSED}: a record must extend the chain head'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_moves_head AFTER INSERT ON audit
          BEGIN UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
          WHEN NEW.id IS NOT OLD.id OR NEW.seq IS NOT OLD.seq + 1
               OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq) {_SQLITE_REFUSE}""",
    f"CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head {_SQLITE_REFUSE}",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_single BEFORE INSERT ON audit_head
          WHEN EXISTS (SELECT 1 FROM audit_head) {_SQLITE_REFUSE}""",
)


def _pg_function(name: str, body: str, *, declare: str = "") -> str:
    """A trigger function; its body is dollar-quoted (migration statements carry no parameters, so no
    placeholder translation touches it)."""
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"{declare}BEGIN\n{body}\nEND $$")


def _pg_refuse_when(condition: str, returns: str, message: str = _REFUSED) -> str:
    return f"IF {condition} THEN RAISE EXCEPTION '{message}'; END IF;\nRETURN {returns};"


_POSTGRES_FUNCTIONS = (
    _pg_function("audit_refuse", f"RAISE EXCEPTION '{_REFUSED}';"),
    _pg_function("audit_delete_below_anchor", _pg_refuse_when(
        "OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0)", "OLD")),
    _pg_function("audit_extends_head", _pg_refuse_when(
        """NEW.seq IS DISTINCT FROM (SELECT seq + 1 FROM audit_head WHERE id = 1)
           OR NEW.prev_hash IS DISTINCT FROM (SELECT hash FROM audit_head WHERE id = 1)""", "NEW",
        f"{_REFUSED}: a record must extend the chain head")),
    _pg_function("audit_moves_head", "UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;\n"
                                     "RETURN NULL;"),
    _pg_function("audit_head_forward_only", _pg_refuse_when(
        """NEW.id IS DISTINCT FROM OLD.id OR NEW.seq IS DISTINCT FROM OLD.seq + 1
           OR NEW.hash IS DISTINCT FROM (SELECT hash FROM audit WHERE seq = NEW.seq)""", "NEW")),
    _pg_function("audit_anchor_forward_only", _pg_refuse_when(
        """NEW.id IS DISTINCT FROM OLD.id OR NEW.seq <= OLD.seq OR NEW.seq >= (SELECT seq FROM audit_head WHERE id = 1)
           OR NEW.hash IS DISTINCT FROM (SELECT hash FROM audit WHERE seq = NEW.seq)""", "NEW")),
    _pg_function("audit_single_row", "EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I)', TG_TABLE_SCHEMA, "
                                     "TG_TABLE_NAME) INTO taken;\n" + _pg_refuse_when("taken", "NEW"),
                 declare="DECLARE taken boolean;\n"),
)


def _pg_trigger(name: str, when: str, table: str, function: str, each: str = "ROW") -> str:
    return f"CREATE TRIGGER {name} {when} ON {table} FOR EACH {each} EXECUTE FUNCTION {function}()"


_POSTGRES_TRIGGERS = (
    _pg_trigger("audit_no_update", "BEFORE UPDATE", "audit", "audit_refuse"),
    _pg_trigger("audit_no_delete", "BEFORE DELETE", "audit", "audit_delete_below_anchor"),
    _pg_trigger("audit_extends_head", "BEFORE INSERT", "audit", "audit_extends_head"),
    _pg_trigger("audit_moves_head", "AFTER INSERT", "audit", "audit_moves_head"),
    _pg_trigger("audit_head_forward_only", "BEFORE UPDATE", "audit_head", "audit_head_forward_only"),
    _pg_trigger("audit_head_no_delete", "BEFORE DELETE", "audit_head", "audit_refuse"),
    _pg_trigger("audit_head_single", "BEFORE INSERT", "audit_head", "audit_single_row"),
    _pg_trigger("audit_anchor_forward_only", "BEFORE UPDATE", "audit_anchor", "audit_anchor_forward_only"),
    _pg_trigger("audit_anchor_no_delete", "BEFORE DELETE", "audit_anchor", "audit_refuse"),
    _pg_trigger("audit_anchor_single", "BEFORE INSERT", "audit_anchor", "audit_single_row"),
    *(_pg_trigger(f"{table}_no_truncate", "BEFORE TRUNCATE", table, "audit_refuse", each="STATEMENT")
      for table in ("audit", "audit_head", "audit_anchor")),
)

AUDIT_SCHEMA = Schema("audit", (
    Migration(1, "the hash-chained audit log, its head and purge anchor, and the triggers that keep it append-only",
              sqlite=_tables("INTEGER") + _SQLITE_TRIGGERS,
              postgres=_tables("BIGINT") + _POSTGRES_FUNCTIONS + _POSTGRES_TRIGGERS),
))
