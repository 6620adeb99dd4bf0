"""Leases with epochs, kept in the database every worker shares: who leads triage, who owns an incident.

A lease is a row: its name, the worker holding it, an epoch, and when it expires. Taking a lease that
is free or expired increments the epoch; the holder renews it before it expires; a worker that stops
renewing (it died, or it was paused past its lease) loses it to the next taker. Expiry is judged by the
database's clock, one clock for every worker, so no worker's skew decides who holds what.

Why the database and not a JetStream KV bucket or a PostgreSQL advisory lock: a lease guards writes to
the database, so the holder's writes carry a fence — `fence(conn, lease)` inside the write's own
transaction checks that the lease is still this worker's, at this epoch, and unexpired — and a worker
that lost its lease cannot commit anything, however late its writes arrive. A KV lease cannot be
checked inside a database transaction; an advisory lock has no epoch and lives only as long as one
connection, so a paused worker's lock survives its own lease.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..db import Connection, Database, Migration, Schema, ensure

LEASE_SCHEMA = Schema("leases", (
    Migration(1, "leases with epochs (triage leadership, incident ownership)",
              sqlite=("""CREATE TABLE IF NOT EXISTS leases (
                           name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL,
                           expires_at REAL NOT NULL, taken_at REAL NOT NULL)""",
                      "CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder)"),
              postgres=("""CREATE TABLE IF NOT EXISTS leases (
                             name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,
                             expires_at DOUBLE PRECISION NOT NULL, taken_at DOUBLE PRECISION NOT NULL)""",
                        "CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder)")),
))

_NOW = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
        "postgres": "EXTRACT(EPOCH FROM clock_timestamp())::double precision"}


class Fenced(RuntimeError):
    """A write by a worker whose lease is gone (expired, or taken by another at a newer epoch)."""


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_at: float  # the database clock's epoch seconds


class Leases:
    """Take, renew, release and check leases in `db` (the database every worker shares)."""

    def __init__(self, db: Database):
        self.db = db
        self._now = _NOW[db.dialect.name]
        ensure(db, LEASE_SCHEMA)

    def acquire(self, name: str, holder: str, ttl_s: float, *, anew: bool = False) -> Lease | None:
        """The lease, if it was free, expired, or already `holder`'s (then renewed at the same epoch);
        None while another worker holds it. `anew`: a process taking the lease for the first time under
        a holder name that may still hold it (the same worker, restarted after a crash) takes it at once
        but at the next epoch, so whatever its previous life still had in flight is fenced."""
        same = f"leases.holder = excluded.holder AND leases.expires_at > {self._now} AND NOT ?"
        with self.db.write() as conn:
            conn.execute(f"""INSERT INTO leases (name, holder, epoch, expires_at, taken_at)
                             VALUES (?, ?, 1, {self._now} + ?, {self._now})
                             ON CONFLICT (name) DO UPDATE SET
                               epoch = CASE WHEN {same} THEN leases.epoch ELSE leases.epoch + 1 END,
                               taken_at = CASE WHEN {same} THEN leases.taken_at ELSE excluded.taken_at END,
                               holder = excluded.holder, expires_at = excluded.expires_at
                             WHERE leases.holder = excluded.holder OR leases.expires_at <= {self._now}""",
                         [name, holder, ttl_s, anew, anew])
            return self._read(conn, name, holder)

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        """The lease extended by `ttl_s` from now; None if it was lost (expired and taken, or released)."""
        with self.db.write() as conn:
            updated = conn.execute(
                f"""UPDATE leases SET expires_at = {self._now} + ?
                    WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > {self._now}""",
                [ttl_s, lease.name, lease.holder, lease.epoch]).rowcount
            return self._read(conn, lease.name, lease.holder) if updated else None

    def renew_all(self, leases: list[Lease], ttl_s: float) -> list[Lease]:
        """Those of `leases` still held, each extended by `ttl_s` from now, in one transaction (a worker
        renews every incident it owns at once)."""
        kept = []
        with self.db.write() as conn:
            for lease in leases:
                if conn.execute(f"""UPDATE leases SET expires_at = {self._now} + ?
                                    WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > {self._now}""",
                                [ttl_s, lease.name, lease.holder, lease.epoch]).rowcount:
                    kept.append(self._read(conn, lease.name, lease.holder))
        return kept

    def drop(self, lease: Lease) -> None:
        """Delete the lease (its subject is finished, as a closed incident is): no row is left behind for
        it. Only the holder at its epoch can."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ? AND epoch = ?",
                         [lease.name, lease.holder, lease.epoch])

    def release(self, lease: Lease) -> None:
        """Give the lease up at once (a clean stop): the next taker need not wait for it to expire."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE leases SET expires_at = {self._now} WHERE name = ? AND holder = ? AND epoch = ?",
                         [lease.name, lease.holder, lease.epoch])

    def fence(self, conn: Connection, lease: Lease) -> None:
        """Inside a write transaction: raise Fenced unless `lease` still holds. On PostgreSQL the row is
        locked until the transaction ends, so no one can take the lease between this check and the
        commit; SQLite's write lock already keeps every other writer out."""
        lock = " FOR UPDATE" if self.db.dialect.name == "postgres" else ""
        row = conn.execute(f"SELECT holder, epoch, expires_at > {self._now} FROM leases WHERE name = ?{lock}",
                           [lease.name]).fetchone()
        if row is None or row[0] != lease.holder or row[1] != lease.epoch or not row[2]:
            held = f"held by {row[0]} at epoch {row[1]}" if row else "free"
            raise Fenced(f"lease {lease.name} of {lease.holder} at epoch {lease.epoch} is gone (now {held}): "
                         "this worker's writes are refused")

    def holders(self, prefix: str = "") -> list[dict]:
        """Every lease (whose name starts with `prefix`) as it stands, with whether it is live."""
        rows = self.db.connection().execute(
            f"""SELECT name, holder, epoch, expires_at, expires_at > {self._now}, expires_at - {self._now}
                FROM leases WHERE name LIKE ? ORDER BY name""", [prefix + "%"]).fetchall()
        return [{"name": n, "holder": h, "epoch": e, "expires_at": x, "live": bool(live), "remaining_s": left}
                for n, h, e, x, live, left in rows]

    def _read(self, conn: Connection, name: str, holder: str) -> Lease | None:
        row = conn.execute("SELECT holder, epoch, expires_at FROM leases WHERE name = ?", [name]).fetchone()
        if row is None or row[0] != holder:
            return None
        return Lease(name, row[0], row[1], row[2])
