"""What `rtem run` starts beside its loop: its own NATS server, the HTTP API and console, the regular
retention purge and the regular trimming of the EVENTS stream."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio

from bus import Bus, DataDirInUse, EmbeddedNats, NatsServerError

from . import metrics
from .config import Settings
from .db import Database
from .rules_reload import RulesReloader
from .service import Components
from .store import RetentionPolicy, purge
from .tokens import TokenStore
from .topology_reload import TopologySource

log = logging.getLogger("rtem.run")


def start_embedded_server(data_dir: Path, targets: Mapping[str, Sequence[str]] | None = None) -> EmbeddedNats:
    """rtem's own NATS server on data_dir/nats, with credentials (docs/nats.md) and the target users
    `targets`, on the port it had before so that producers and targets reconnect; a second rtem on the
    directory is refused."""
    port_file = data_dir / "nats.port"
    port = int(port_file.read_text()) if port_file.is_file() else None
    server = EmbeddedNats(data_dir / "nats", port=port, authenticate=True, targets=targets)
    try:
        server.start()
    except DataDirInUse:
        raise
    except NatsServerError:
        if port is None:
            raise
        log.warning("the NATS port %d of %s is taken; starting on another one", port, data_dir)
        server = EmbeddedNats(data_dir / "nats", authenticate=True, targets=targets)
        server.start()
    port_file.write_text(str(server.port))
    (data_dir / "nats.url").write_text(server.url)
    return server


def reader_threads(settings: Settings) -> int:
    """How many requests the API serves at once: its reader's connections, less one for its own use."""
    return max(1, settings.database_pool_size - 1)


async def serve_http(settings: Settings, topology: TopologySource, parts: Components, bus: Bus, reloader: RulesReloader,
                     tokens: TokenStore, reader: Database, ready: Callable[[], bool], role: Callable[[], str]):
    """Serve the HTTP API and console (agent/api) on this event loop; (uvicorn server, its task, URL).
    `reader` is the read-only database its requests read the store through. The port is bound here, so
    a taken one is an OSError that names it, not uvicorn's exit."""
    import uvicorn

    from .api import ApiContext, create_app
    from .chat import answer
    from .dlq import DeadLetterQueue

    chat = answer
    client = getattr(parts.graph.deps.reasoner, "client", None)
    if settings.llm != "none" and client is not None:  # chat through the reasoner's LLM client
        from .llm import LlmChat

        chat = LlmChat(settings, client=client).answer
    ctx = ApiContext(
        reader=reader, topologies=topology, audit=parts.audit, ledger=parts.ledger, tokens=tokens,
        publish=bus.publish_lines, chat=chat, reloader=reloader, max_body_bytes=settings.http_max_body_bytes,
        policy=parts.graph.deps.policy, ready=ready, role=role, learning=parts.graph.deps.learning,
        dead_letters=DeadLetterQueue(bus, parts.audit, max_event_bytes=settings.max_event_bytes))
    # Each request thread keeps a connection of the reader's while it lives: no more request threads at
    # once than the reader has connections, so a burst of requests waits for a thread instead of failing
    # for want of a connection (docs/storage.md).
    anyio.to_thread.current_default_thread_limiter().total_tokens = reader_threads(settings)
    config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # rtem run owns Ctrl-C
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.http_host, settings.http_port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {settings.http_host}:{settings.http_port}: "
                      f"{exc.strerror} (set --http-port or RTEM_HTTP_PORT)") from None
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        task.result()
    return server, task, f"http://{settings.http_host}:{sock.getsockname()[1]}"


async def purge_regularly(parts: Components, settings: Settings, stop: asyncio.Event, every_s: float) -> None:
    """Retention (docs/retention.md): purge what the settings no longer keep a minute after start (or
    sooner) and then every `every_s`, until `stop`; a failed purge is logged and tried again next time."""
    policy = RetentionPolicy.from_settings(settings)
    wait = min(60.0, every_s)
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
            return
        except asyncio.TimeoutError:
            wait = every_s
        try:
            report = await asyncio.to_thread(purge, parts.store, parts.audit, policy, actor="rtem run")
            log.info("retention purge: %s", report.counts())
        except Exception:
            log.exception("retention purge failed; trying again in %.0f s", every_s)


async def trim_regularly(bus: Bus, stop: asyncio.Event, every_s: float) -> None:
    """EVENTS' trimming (bus/_trim.py): every `every_s` until `stop`, purge the events triage acknowledged
    longer ago than RTEM_EVENTS_KEEP_S, so that EVENTS fills only when rtem falls behind. A failed trim
    (the bus reconnecting) is logged and tried again next time; nothing unacknowledged is ever purged."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
            return
        except asyncio.TimeoutError:
            pass
        try:
            removed = await bus.trim_events()
        except Exception as exc:
            log.warning("trimming the EVENTS stream failed (trying again in %.0f s): %s: %s", every_s,
                        type(exc).__name__, exc)
            continue
        if removed:
            metrics.EVENTS_TRIMMED.inc(removed)
            log.info("trimmed %d acknowledged event(s) from the EVENTS stream", removed)
