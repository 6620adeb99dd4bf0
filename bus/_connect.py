"""Connecting to NATS: credentials, a cluster's URLs, and how long to try (`connect_nats`; `Bus.connect`
puts rtem's streams on the connection). A service waits for its bus as long as it takes; a command a
person waits on gives up and says why."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats

from ._auth import NatsAuthError, _auth_kind, _refused, connect_options
from ._streams import BusSettings

log = logging.getLogger("rtem.bus")


def server_urls(url: str) -> list[str]:
    """The servers of `url`: one, or several of a cluster separated by commas."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("no NATS server in the URL")
    return servers


class BusUnreachable(ConnectionError):
    """No server of the URL could be reached within the time a command gives it (`give_up_s`)."""


class Reconnects:
    """How many times a connection has reconnected; `wait(after)` returns once it has more than `after`.
    A request in flight across a reconnect may have lost its reply with the old connection."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def note(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, after: int) -> None:
        while self.count <= after:
            await self._changed.wait()


async def connect_nats(url: str, settings: BusSettings, *, name: str = "rtem",
                       give_up_s: float | None = None) -> tuple[nats.NATS, Reconnects]:
    """A client connected as `settings.auth` says (credentials file, nkey seed, token or user and password;
    TLS), and its count of reconnects; a server that refuses the credentials raises here, naming the server.
    `url` may name several servers of a cluster, comma-separated: the client connects to one and fails over
    to the others.

    A server that cannot be reached is tried again until it can (a service waits for its bus), each failed
    try logged as a warning; with `give_up_s` (a command a person waits on) for that long, each try logged
    at debug level, and then `BusUnreachable` says why the last try failed."""
    nc = nats.NATS()
    connected = False
    reconnects = Reconnects()
    last_failure: Exception | None = None

    async def on_reconnect() -> None:
        reconnects.note()

    async def on_error(exc: Exception) -> None:
        nonlocal last_failure
        # nats-py retries the first connection as long as later ones (forever): a refusal of the
        # credentials or of the server's certificate will not change, so it ends the attempt here.
        if not connected and _refused(exc):
            raise NatsAuthError(f"{url} refused the connection ({_auth_kind(settings.auth)}): {exc}. Check "
                                "RTEM_NATS_CREDS, RTEM_NATS_NKEY_SEED, RTEM_NATS_TOKEN or RTEM_NATS_USER and "
                                "RTEM_NATS_PASSWORD, and RTEM_NATS_TLS_* (docs/nats.md)") from None
        if not connected:
            last_failure = exc
        log.log(logging.DEBUG if give_up_s is not None and not connected else logging.WARNING,
                "NATS %s: %s: %s", url, type(exc).__name__, exc)

    connecting = nc.connect(servers=server_urls(url), name=name, max_reconnect_attempts=-1,
                            reconnect_time_wait=settings.reconnect_wait_s, connect_timeout=5, error_cb=on_error,
                            reconnected_cb=on_reconnect, **connect_options(settings.auth))
    try:
        await (connecting if give_up_s is None else asyncio.wait_for(connecting, give_up_s))
    except (NatsAuthError, asyncio.TimeoutError) as exc:
        with contextlib.suppress(Exception):  # closing a refused TLS connection can hang in nats-py
            await asyncio.wait_for(nc.close(), 2)
        if isinstance(exc, NatsAuthError) or give_up_s is None:
            raise
        why = f"{type(last_failure).__name__}: {last_failure}" if last_failure else "no answer"
        raise BusUnreachable(f"no connection to {url} within {give_up_s:g} s (last try: {why})") from None
    connected = True
    return nc, reconnects

