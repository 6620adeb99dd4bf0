"""Versioned schemas: each component that keeps records in the database (the incident store, the
ledger, the action history, tokens, the audit log) declares its tables as numbered migrations, and
`schema_versions` says which version of each the database has.

`migrate` brings the database up to the versions this rtem knows, each component in one transaction
(on PostgreSQL under an advisory lock, so workers starting together migrate once). A database with a
component *newer* than this rtem knows is refused (`SchemaTooNew`): an older worker must not write
records a newer one laid out differently. `rtem db migrate` and `rtem db status` run these by hand
(docs/deployment.md); a component opening a writable database migrates it itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from ._base import Database

VERSIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY, version INTEGER NOT NULL, migrated_at TEXT NOT NULL)"""

# Any fixed number: the PostgreSQL advisory lock every migrating worker takes first.
_MIGRATION_LOCK = 0x7274656D  # "rtem"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer rtem than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


@dataclass(frozen=True)
class Schema:
    """One component's tables, as the migrations that make them, oldest first (versions 1, 2, …)."""

    component: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        numbers = [m.version for m in self.migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1, 2, … in order, not {numbers}")

    @property
    def version(self) -> int:
        return self.migrations[-1].version if self.migrations else 0


@dataclass(frozen=True)
class SchemaStatus:
    component: str
    version: int  # in the database (0: none yet)
    known: int  # this rtem's

    @property
    def state(self) -> str:
        if self.version == self.known:
            return "current"
        return "behind" if self.version < self.known else "newer than this rtem"

    def to_dict(self) -> dict:
        return {"component": self.component, "version": self.version, "known": self.known, "state": self.state}


def versions(db: Database) -> dict[str, int]:
    """Each component's version in the database ({} before the first migration)."""
    conn = db.connection()
    if db.dialect.name == "sqlite":
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_versions'").fetchone()
    else:
        exists = conn.execute("SELECT to_regclass('schema_versions')").fetchone()[0]
    if not exists:
        return {}
    return {component: version for component, version in
            conn.execute("SELECT component, version FROM schema_versions").fetchall()}


def status(db: Database, schemas: Iterable[Schema]) -> list[SchemaStatus]:
    found = versions(db)
    return [SchemaStatus(s.component, found.get(s.component, 0), s.version) for s in schemas]


def check(db: Database, schemas: Iterable[Schema]) -> None:
    """Raise SchemaTooNew if the database holds a component newer than this rtem knows."""
    newer = [s for s in status(db, schemas) if s.version > s.known]
    if newer:
        raise SchemaTooNew(
            f"{db.where} was migrated by a newer rtem ("
            + ", ".join(f"{s.component} version {s.version}, this rtem knows {s.known}" for s in newer)
            + "): upgrade this rtem, or run it on a database of its own")


def migrate(db: Database, schemas: Iterable[Schema], *, at: datetime | None = None) -> list[tuple[str, int, int]]:
    """Apply what each schema lacks; (component, from version, to version) for each one migrated."""
    done = []
    for schema in schemas:
        with db.write() as conn:
            if db.dialect.name == "postgres":
                conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            conn.execute(VERSIONS_TABLE)
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", [schema.component]).fetchone()
            current = row[0] if row else 0
            if current > schema.version:
                check(db, [schema])
            if current == schema.version:
                continue
            for migration in schema.migrations[current:]:
                for statement in migration.statements(db.dialect.name):
                    conn.execute(statement)
            conn.execute("""INSERT INTO schema_versions (component, version, migrated_at) VALUES (?, ?, ?)
                            ON CONFLICT (component) DO UPDATE SET version = excluded.version,
                                                                  migrated_at = excluded.migrated_at""",
                         [schema.component, schema.version, (at or datetime.now(timezone.utc)).isoformat()])
            done.append((schema.component, current, schema.version))
    return done


def ensure(db: Database, schema: Schema) -> None:
    """What a component does when it opens: migrate a writable database, check a read-only one."""
    if db.readonly:
        check(db, [schema])
    else:
        migrate(db, [schema])
