"""PostgreSQL, for several workers on one database: psycopg 3 connections from a psycopg_pool pool.

Each thread leases one connection from the pool for as long as it lives (as SQLite's threads keep
theirs), in autocommit mode, so a statement outside `write`/`snapshot` commits at once and the
transactions are the explicit BEGIN/COMMIT of `ThreadConnections`. A connection that broke (the
server restarted) is dropped when its thread next asks for one, and the pool opens a new one.
Components write SQL once, with `?` placeholders; `_pg` turns them into psycopg's `%s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from ._base import POSTGRES, DatabaseUnreachable
from ._threads import ThreadConnections


@lru_cache(maxsize=2048)
def _pg(sql: str) -> str:
    """`?` placeholders (outside quotes) as psycopg's `%s`, and a literal `%` as `%%`."""
    out, quoted = [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
            out.append(ch)
        elif ch == "?" and not quoted:
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class PgConnection:
    """A psycopg connection that takes SQL with `?` placeholders, as a sqlite3 connection does."""

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        if not params:  # without parameters psycopg sends the text as it is: no `%` to double
            return self.raw.execute(sql)
        return self.raw.execute(_pg(sql), list(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(_pg(sql), [list(row) for row in rows])
        return cursor


def _read_only(conn: psycopg.Connection) -> None:
    conn.execute("SET default_transaction_read_only = on")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(an invalid URL)"
    params.pop("password", None)
    return make_conninfo(**params)


class PostgresDatabase(ThreadConnections):
    """One PostgreSQL database through a connection pool; a `Database`."""

    dialect = POSTGRES

    def __init__(self, url: str, *, readonly: bool = False, pool_size: int = 20, connect_timeout_s: float = 10.0,
                 acquire_timeout_s: float = 2.0):
        """`connect_timeout_s`: how long opening waits for the server; `acquire_timeout_s`: how long a thread
        waits for a connection later. Short, so that while the server is down a caller fails fast (a
        triage batch is redelivered, the leader stops renewing its lease) instead of hanging."""
        super().__init__(readonly=readonly)
        self.url = url
        # Read-only: the server refuses any write, whatever the code tries. (Set after connecting: an
        # `options` keyword would replace the URL's own, such as its search_path.)
        configure = _read_only if readonly else None
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                                   configure=configure, open=False, timeout=acquire_timeout_s, name="rtem")
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self.pool.close()
            raise DatabaseUnreachable(f"cannot connect to PostgreSQL at {self.where} within {connect_timeout_s:.0f}s: "
                                      "is it running, and are the URL's host, user and password right?") from None

    @property
    def where(self) -> str:
        return redacted(self.url)

    @property
    def target(self) -> str:
        return self.url

    def connection(self) -> PgConnection:
        conn = super().connection()
        if not conn.usable:
            self.forget()
            conn = super().connection()
        return conn

    def _connect(self) -> PgConnection:
        return PgConnection(self.pool.getconn())

    def _release(self, conn: PgConnection) -> None:
        if self.pool.closed:
            conn.raw.close()
            return
        if conn.in_transaction and conn.usable:
            conn.raw.execute("ROLLBACK")
        self.pool.putconn(conn.raw)

    def close(self) -> None:
        super().close()
        self.pool.close()
