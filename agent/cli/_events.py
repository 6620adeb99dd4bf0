"""`rtem analyze` (replay a recording offline) and `rtem ingest` (publish events to the bus)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from bus import Bus, NatsAuth, NatsServerError
from bus import PRODUCER, embedded_credentials
from rules import RulesError

from ..config import Settings
from ._common import JsonOpt, LlmOpt, TopologyOpt, err, fail, out, settings, topology_of
from ._incidents import print_incident


def analyze(
    files: Annotated[list[Path], typer.Argument(help="Recorded events: CloudEvents JSON lines.", show_default=False)],
    topology: TopologyOpt = None,
    json_out: JsonOpt = False,
    each: Annotated[bool, typer.Option("--each", help="Analyze every file on its own; one JSON object per line.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Add to the store of earlier analyses (in --out) instead of "
                    "starting fresh: their incidents and confirmed causes count as history. With --each, the "
                    "files in the order given, each seeing only those before it.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Keep the store and audit log here "
                       "(default: RTEM_DATA_DIR/analyze, replaced on each run unless --keep).")] = None,
    llm: LlmOpt = None,
) -> None:
    """Replay recorded events through the same bus, rules and graph as `rtem run` (dry run) and report the incidents."""
    from ..analyze import analyze_files
    from ..llm import LLMSetupError

    cfg = settings(llm)
    for path in files:
        if not path.is_file():
            fail(f"{path}: no such file")
    topo = topology_of(cfg, topology)
    workdir = out_dir or cfg.data_dir / "analyze"
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with err.status("starting", spinner="dots") as status:
        def progress(p):
            status.update(f"{p.file}: {p.stage} · published {p.published} · triaged {p.processed} · "
                          f"incidents {p.incidents}")
        try:
            results = asyncio.run(analyze_files(files, topo, cfg, workdir=workdir, each=each, keep=keep,
                                                    progress=progress))
        except RulesError as exc:
            fail(str(exc))
        except NatsServerError as exc:
            fail(str(exc), 1)
        except LLMSetupError as exc:
            fail(str(exc))
    if json_out:
        for result in results:
            doc = {"file": result.file, **result.report} if each else result.report
            print(json.dumps(doc, separators=(",", ":") if each else (", ", ": "), indent=None if each else 2))
        return
    for result in results:
        _print_analysis(result)
    err.print(f"[dim]store and audit log: {results[-1].db_path} — try `rtem incidents --db {results[-1].db_path}`[/]")


def _print_analysis(result) -> None:
    stats = result.report["stats"]
    incidents = result.report["incidents"]
    out.rule(f"[bold]{result.file}")
    out.print(f"{stats['events']} events · {stats['invalid']} invalid (in the DLQ) · {stats['duplicates']} "
              f"duplicates · {len(incidents)} incident{'s' if len(incidents) != 1 else ''}")
    for inc in incidents:
        print_incident(inc)


def ingest(
    files: Annotated[list[Path], typer.Argument(help="CloudEvents JSON lines ('-' for standard input).")],
    nats_url: Annotated[Optional[str], typer.Option("--nats-url", help="Server to publish to (default: RTEM_NATS_URL, "
                        "else the embedded server of a running `rtem run`).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish events to the bus. Invalid lines are published too: the consumer dead-letters them with the reason."""
    cfg = settings()
    url = nats_url or cfg.nats_url or _running_server_url(cfg)
    if not url:
        fail("no NATS server: set RTEM_NATS_URL, pass --nats-url, or start `rtem run` first")
    producer = _producer_credentials(cfg, url)
    bus_settings = cfg.bus_settings() if producer is None else replace(cfg.bus_settings(), auth=producer)

    async def publish():
        bus = await Bus.connect(url, bus_settings, name="rtem-ingest")
        try:
            if producer is None:  # rtem run made the streams of its own server; a producer may not
                await bus.ensure_streams()
            totals = {"lines": 0, "published": 0, "duplicates": 0, "rejected": 0}
            for path in files:
                handle = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
                with handle:
                    report = await bus.publish_lines(handle)
                for key in totals:
                    totals[key] += getattr(report, key)
            return totals
        finally:
            await bus.close()

    for path in files:
        if str(path) != "-" and not path.is_file():
            fail(f"{path}: no such file")
    try:
        totals = asyncio.run(publish())
    except (OSError, asyncio.TimeoutError) as exc:
        fail(f"cannot publish to {url}: {exc}", 1)
    if json_out:
        print(json.dumps(totals))
    else:
        out.print(f"{totals['published']} published · {totals['duplicates']} duplicates (already on the bus) · "
                  f"{totals['rejected']} rejected (too large, sent to the DLQ) · from {totals['lines']} lines")


def _running_server_url(cfg: Settings) -> str | None:
    marker = cfg.data_dir / "nats.url"
    return marker.read_text().strip() if marker.is_file() else None


def _producer_credentials(cfg: Settings, url: str) -> NatsAuth | None:
    """The `producer` credentials of `rtem run`'s own server when `url` is that server (docs/nats.md)."""
    if url != _running_server_url(cfg):
        return None
    try:
        return embedded_credentials(cfg.data_dir / "nats", PRODUCER)
    except (OSError, ValueError, NatsServerError) as exc:
        fail(f"cannot read the NATS credentials in {cfg.data_dir / 'nats'}: {exc}", 1)
