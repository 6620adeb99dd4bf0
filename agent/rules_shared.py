"""Rules shared by the workers of a cluster: every published rule set version, in the database they share.

    shared = SharedRules(db)
    reloader = RulesReloader(rules_dir, ..., shared=shared, worker_id="w1")   # joins the cluster's version
    rules_in_force(db)   # each worker's version in force and when it last said so (`rtem cluster status`)

A **version** is a whole rule set: its digest (the one every verdict records), the text of each of its
files (guardrails/, contracts/, detect/), the worker and actor that published it, and when. The latest
row is the cluster's version. The life of a change:

- **publish**: a worker whose own files change (its watcher, an explicit reload, or an edit made while it
  was down) and load without error publishes its whole set. A refused set is never published.
- **adopt**: every other worker sees the new latest digest at its next poll (each watch tick; one query
  on the primary key), writes the version's files into a private directory, checks them exactly as a
  change to its own files is checked, and swaps them in — or refuses them as any change is refused and
  keeps the rules it has (a worker of an older rtem that does not know an action type, say).
- **the latest row wins**: ids only grow and a worker only ever moves to a version newer than the last
  one it considered, so two workers publishing at once both end on the one with the higher id.

Why the database and not a NATS KV bucket: the approvals, the kill switch and the guardrails' history
every worker shares are already there, one backup holds them all, and a worker that reaches the
database to judge also reaches the rules it judges with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from .db import Connection, Database, Migration, Schema, ensure, versions
from .rules_files import WATCHED, content_digest

log = logging.getLogger("rtem.rules")

RULES_SCHEMA = Schema("rules", (
    Migration(1, "rule set versions published to the cluster, and the version each worker has in force",
              sqlite=("""CREATE TABLE IF NOT EXISTS rules_versions (
                           id INTEGER PRIMARY KEY AUTOINCREMENT, digest TEXT NOT NULL, content TEXT NOT NULL,
                           files TEXT NOT NULL, worker TEXT NOT NULL, actor TEXT NOT NULL, via TEXT NOT NULL,
                           published_at REAL NOT NULL)""",
                      """CREATE TABLE IF NOT EXISTS rules_in_force (
                           worker TEXT PRIMARY KEY, digest TEXT NOT NULL, local_content TEXT NOT NULL,
                           loaded_at REAL NOT NULL, seen_at REAL NOT NULL)"""),
              postgres=("""CREATE TABLE IF NOT EXISTS rules_versions (
                             id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, digest TEXT NOT NULL,
                             content TEXT NOT NULL, files TEXT NOT NULL, worker TEXT NOT NULL, actor TEXT NOT NULL,
                             via TEXT NOT NULL, published_at DOUBLE PRECISION NOT NULL)""",
                        """CREATE TABLE IF NOT EXISTS rules_in_force (
                             worker TEXT PRIMARY KEY, digest TEXT NOT NULL, local_content TEXT NOT NULL,
                             loaded_at DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL)""")),
))

# The database's clock, as the leases use it: one clock for every worker's "when".
_NOW = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
        "postgres": "EXTRACT(EPOCH FROM clock_timestamp())::double precision"}

REPORT_EVERY_S = 10.0  # how often a worker says again which version it has in force
_COLUMNS = "id, digest, content, files, worker, actor, via, published_at"


@dataclass(frozen=True)
class RulesVersion:
    """One published rule set. `content` is the digest of its files' names and bytes (what a worker
    compares its own directory with); `digest` is the rules digest verdicts record."""

    id: int
    digest: str
    content: str
    files: dict[str, str]  # "guardrails/default.yaml" -> its text
    worker: str
    actor: str
    via: str
    published_at: datetime

    def origin(self) -> dict[str, Any]:
        """What the audit record of a worker that loads it says about where it came from."""
        return {"version": self.id, "published_by": self.worker, "actor": self.actor, "via": self.via,
                "published_at": self.published_at.isoformat()}


class SharedRules:
    """The published versions and each worker's version in force, in `db` (the database every worker shares)."""

    def __init__(self, db: Database):
        self.db = db
        self._now = _NOW[db.dialect.name]
        ensure(db, RULES_SCHEMA)

    def head(self) -> tuple[int, str] | None:
        """(id, digest) of the latest version: what each worker polls, cheaply."""
        row = self.db.connection().execute("SELECT id, digest FROM rules_versions ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def latest(self) -> RulesVersion | None:
        """The cluster's version: the latest published."""
        return self._latest(self.db.connection())

    def publish(self, digest: str, files: dict[str, str], *, worker: str, actor: str, via: str) -> RulesVersion:
        """Make `files` the cluster's version, unless it already is (every worker given the same files
        by a deployment tool publishes them: they are one version)."""
        with self.db.write() as conn:
            latest = self._latest(conn)
            if latest is not None and latest.digest == digest:
                return latest
            row = conn.execute(
                f"""INSERT INTO rules_versions (digest, content, files, worker, actor, via, published_at)
                    VALUES (?, ?, ?, ?, ?, ?, {self._now}) RETURNING {_COLUMNS}""",
                [digest, content_of(files), json.dumps(files, sort_keys=True), worker, actor, via]).fetchone()
            return _version(row)

    def report(self, worker: str, digest: str, local_content: str) -> None:
        """Say that `worker` has `digest` in force, now; and what its own directory held when it last
        read it (`local_content`), so that after a restart it can tell whether its files changed meanwhile."""
        with self.db.write() as conn:
            conn.execute(
                f"""INSERT INTO rules_in_force (worker, digest, local_content, loaded_at, seen_at)
                    VALUES (?, ?, ?, {self._now}, {self._now})
                    ON CONFLICT (worker) DO UPDATE SET
                      loaded_at = CASE WHEN rules_in_force.digest = excluded.digest
                                       THEN rules_in_force.loaded_at ELSE excluded.loaded_at END,
                      digest = excluded.digest, local_content = excluded.local_content, seen_at = excluded.seen_at""",
                [worker, digest, local_content])

    def local_content(self, worker: str) -> str | None:
        """What `worker`'s own directory held when it last reported (None: it never has)."""
        row = self.db.connection().execute("SELECT local_content FROM rules_in_force WHERE worker = ?",
                                           [worker]).fetchone()
        return row[0] if row else None

    def _latest(self, conn: Connection) -> RulesVersion | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM rules_versions ORDER BY id DESC LIMIT 1").fetchone()
        return _version(row) if row else None


def rules_in_force(db: Database) -> list[dict[str, Any]]:
    """Each worker's rules in force: `worker`, `digest`, `at` (when it last said so, by the database's
    clock; every 10 s while it runs), `age_s`, `since` (when that digest came into force there), and
    `current` (whether it is the cluster's latest version). [] on a database no worker shared rules in."""
    if versions(db).get(RULES_SCHEMA.component, 0) == 0:
        return []
    now = _NOW[db.dialect.name]
    conn = db.connection()
    latest = conn.execute("SELECT digest FROM rules_versions ORDER BY id DESC LIMIT 1").fetchone()
    rows = conn.execute(f"SELECT worker, digest, seen_at, {now} - seen_at, loaded_at FROM rules_in_force "
                        "ORDER BY worker").fetchall()
    return [{"worker": worker, "digest": digest, "at": _iso(seen), "age_s": round(age, 3), "since": _iso(since),
             "current": latest is not None and digest == latest[0]}
            for worker, digest, seen, age, since in rows]


class ClusterRules:
    """One worker's side of the shared rules, for its `RulesReloader`: which version it considered last,
    where it writes the versions it adopts, and when it last reported. The reloader checks and swaps;
    this class decides what there is to publish or adopt."""

    def __init__(self, shared: SharedRules, worker: str, *, directory: str | Path | None = None,
                 report_every_s: float = REPORT_EVERY_S):
        """`directory`: where adopted versions are written (default: a temporary directory of its own,
        removed by `close`)."""
        self.shared = shared
        self.worker = worker
        self.report_every_s = report_every_s
        self.seen = 0  # the id of the newest version considered: published, adopted, refused or already in force
        self._directory = Path(directory) if directory is not None else None
        self._owned = directory is None
        self._reported = float("-inf")

    def join(self, root: Path, digest: str, local: str, actor: str) -> RulesVersion | None:
        """At start, with this worker's own set loaded: the cluster's version to adopt, if it differs;
        else publish this worker's set when the cluster has none, or when its files changed since it last
        ran (an edit made while it was down is a change like any other)."""
        latest = self.shared.latest()
        edited = self.shared.local_content(self.worker) not in (None, local)
        if latest is not None and latest.digest != digest and not edited:
            return latest
        if latest is None or latest.digest != digest:
            self.publish(root, digest, local, via="start", actor=actor)
        else:
            self.seen = latest.id
            self.report(digest, local)
        return None

    def publish(self, root: Path, digest: str, local: str, *, via: str, actor: str) -> RulesVersion | None:
        """Publish the set this worker just loaded from `root`, whose files' content was `local` when
        checked; not when they changed since (the watcher will judge the new ones)."""
        try:
            files = read_files(root)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("rules %s loaded but not published to the cluster: %s", digest, exc)
            return None
        if content_of(files) != local:
            log.warning("rules %s loaded but not published: the files changed while they were checked", digest)
            return None
        version = self.shared.publish(digest, files, worker=self.worker, actor=actor, via=via)
        self.seen = max(self.seen, version.id)
        self.report(digest, local)
        log.info("rules %s published to the cluster as version %d", digest, version.id)
        return version

    def news(self, in_force: str, local: str) -> RulesVersion | None:
        """The cluster's version when another worker published one this worker has not considered yet;
        also says again which version is in force, every `report_every_s`. Called on every watch tick."""
        if time.monotonic() - self._reported >= self.report_every_s:
            self.report(in_force, local)
        head = self.shared.head()
        if head is None or not self.wanted(*head, in_force):
            return None
        version = self.shared.latest()
        return version if version is not None and self.wanted(version.id, version.digest, in_force) else None

    def wanted(self, version_id: int, digest: str, in_force: str) -> bool:
        """Whether a version is still worth loading: newer than the last considered, and not the one in
        force (that one is noted as considered). Asked again just before the swap, since a reload may
        have published a newer version while this one was being checked."""
        if version_id <= self.seen:
            return False
        if digest == in_force:
            self.seen = version_id
            return False
        return True

    def materialise(self, version: RulesVersion) -> Path:
        """Write the files of `version` into a fresh directory of their own, for the check and the load."""
        root = self.directory_of(version)
        if root.exists():
            shutil.rmtree(root)
        write_files(version.files, root)
        return root

    def adopted(self, version: RulesVersion, in_force: str, local: str) -> None:
        """After the reloader judged `version` (loaded or refused): never consider it again, and report."""
        self.seen = max(self.seen, version.id)
        self.report(in_force, local)
        self._prune(keep=self.directory_of(version) if in_force == version.digest else None)

    def report(self, in_force: str, local: str) -> None:
        self.shared.report(self.worker, in_force, local)
        self._reported = time.monotonic()

    def directory_of(self, version: RulesVersion) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="rtem-rules-"))  # 0700
        return self._directory / f"v{version.id}"

    def status(self) -> dict[str, Any]:
        return {"worker": self.worker, "version": self.seen}

    def close(self) -> None:
        if self._directory is not None and self._owned:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _prune(self, keep: Path | None) -> None:
        """Remove the directories of versions no longer in force (a refused one, a replaced one)."""
        if self._directory is None or not self._directory.is_dir():
            return
        for path in self._directory.iterdir():
            if path != keep and path.name.startswith("v"):
                shutil.rmtree(path, ignore_errors=True)


# -- the files of a version ---------------------------------------------------------------------------


def read_files(root: Path) -> dict[str, str]:
    """The text of every file under `root`'s watched directories, as `rule_files` lists them, byte for
    byte (no newline translation, so the digest of what is published is the digest of what was checked)."""
    found = {}
    for kind in WATCHED:
        directory = root / kind
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file():
                    found[f"{kind}/{path.name}"] = path.read_bytes().decode("utf-8")
    return found


def write_files(files: dict[str, str], root: Path) -> None:
    """Write `files` under `root`, refusing any name outside the watched directories (the names come
    from the database: none may write elsewhere)."""
    for name, text in files.items():
        parts = PurePosixPath(name).parts
        if len(parts) != 2 or parts[0] not in WATCHED or parts[1] in (".", "..") or "\\" in name:
            raise ValueError(f"rules version file {name!r}: not a file of {', '.join(WATCHED)}")
        path = root / parts[0] / parts[1]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))


def content_of(files: dict[str, str]) -> str:
    """The content digest (rules_files.content_digest) of files given as text, in the order `rule_files`
    lists them whatever the order of `files`."""
    def order(name: str) -> tuple[int, str]:
        kind, _, rest = name.partition("/")
        return (WATCHED.index(kind) if kind in WATCHED else len(WATCHED), rest)

    return content_digest([{"file": name, "sha256": hashlib.sha256(files[name].encode("utf-8")).hexdigest()[:16]}
                           for name in sorted(files, key=order)])


def _version(row: tuple) -> RulesVersion:
    id_, digest, content, files, worker, actor, via, published_at = row
    return RulesVersion(id_, digest, content, json.loads(files), worker, actor, via, _iso_time(published_at))


def _iso_time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _iso(seconds: float) -> str:
    return _iso_time(seconds).isoformat()
