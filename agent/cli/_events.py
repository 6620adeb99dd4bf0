"""`rtem analyze` (replay a recording offline) and `rtem ingest` (publish events to the bus)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Annotated, Optional

import typer
from pydantic import BaseModel

from bus import Bus, InvalidEvent, NatsAuth, NatsServerError, parse_event
from bus import PRODUCER, embedded_credentials
from rules import RulesError

from ..config import Settings
from ..reasoner import described_note, unlisted_note
from ._common import CONNECT_WAIT_S, JsonOpt, LlmOpt, TopologyOpt, err, fail, out, settings, topology_of
from ._incidents import print_incident


def analyze(
    files: Annotated[list[Path], typer.Argument(help="Recorded events: files of CloudEvents JSON lines, or a "
                     "directory, which stands for the *.events.jsonl files in it (by name, 2 before 10).",
                     show_default=False)],
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
    """Replay recorded events through the same bus, rules and graph as `rtem run` (dry run) and report the incidents.

    A directory stands for the *.events.jsonl files in it, in name order (numbers as numbers: 2 before 10);
    they are analyzed together (as one recording) unless --each is given."""
    from ..analyze import analyze_files
    from ..llm import LLMSetupError

    cfg = settings(llm)
    files = recordings(files)
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


RECORDING_GLOB = "*.events.jsonl"  # how rtem names recordings (agent/examples, `rtem demo`'s data directory)


def recordings(paths: list[Path]) -> list[Path]:
    """The files to analyze: each file as given, each directory as the *.events.jsonl files in it, in name
    order with numbers compared as numbers (`2.events.jsonl` before `10.events.jsonl`: with `--each --keep`
    each sees those before it), not its subdirectories (a directory of other things is not taken for a
    recording). Exits 2 naming a path that is neither, or a directory without recordings."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted((p for p in path.glob(RECORDING_GLOB) if p.is_file()), key=name_order)
            if not found:
                fail(f"{path}: a directory without {RECORDING_GLOB} files; pass recorded event files "
                     f"(CloudEvents JSON lines, any name), or a directory holding {RECORDING_GLOB} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{path}: no such file or directory")
    return files


def name_order(path: Path) -> tuple:
    """A file's name as a sort key in which each run of digits counts as its number (case-9 before case-10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name))


def read_recordings(paths: list[Path]) -> Iterator:
    """The valid events of recordings (`recordings` says which files), in file order; invalid lines are
    skipped (`rtem ingest` and `rtem analyze` report them)."""
    for path in recordings(paths):
        with open(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        yield parse_event(line)
                    except InvalidEvent:
                        continue


def _print_analysis(result) -> None:
    stats = result.report["stats"]
    incidents = result.report["incidents"]
    out.rule(f"[bold]{result.file}")
    out.print(f"{stats['events']} events · {stats['invalid']} invalid (in the DLQ) · {stats['duplicates']} "
              f"duplicates · {len(incidents)} incident{'s' if len(incidents) != 1 else ''}")
    for inc in incidents:
        print_incident(inc, notes=(described_note(result.extra.get("described", {}).get(inc["id"], {})),
                                   unlisted_note(result.extra.get("unlisted", {}).get(inc["id"], []))))


def ingest(
    files: Annotated[list[Path], typer.Argument(help="CloudEvents JSON lines ('-' for standard input).",
                                                show_default=False)],
    nats_url: Annotated[Optional[str], typer.Option("--nats-url", help="Server to publish to (default: RTEM_NATS_URL, "
                        "else the embedded server of a running `rtem run`).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish events to the bus; each invalid line is reported with its line number and reason.

    Each line is first checked here with the parser the service uses. Invalid lines are published too, so
    that the service dead-letters them with that same reason (`rtem dlq list`, then `rtem dlq redrive`
    after a fix). Exits 0 when every line was published, invalid ones included; 1 when the server cannot
    be reached, or when the EVENTS stream was full and refused lines (run it again later: what was
    published already counts as a duplicate)."""
    cfg = settings()
    url = nats_url or cfg.nats_url or _running_server_url(cfg)
    if not url:
        fail("no NATS server: set RTEM_NATS_URL, pass --nats-url, or start `rtem run` first")
    producer = _producer_credentials(cfg, url)
    bus_settings = cfg.bus_settings() if producer is None else replace(cfg.bus_settings(), auth=producer)
    invalid: list[InvalidLine] = []

    async def publish():
        bus = await Bus.connect(url, bus_settings, name="rtem-ingest", give_up_s=CONNECT_WAIT_S)
        try:
            if producer is None:  # rtem run made the streams of its own server; a producer may not
                await bus.ensure_streams()
            totals = {"lines": 0, "published": 0, "duplicates": 0, "rejected": 0, "full": 0}
            dead_lettered: list[str] = []
            full_reason = None
            for path in files:
                handle = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
                with handle:
                    label = "<stdin>" if str(path) == "-" else str(path)
                    report = await bus.publish_lines(checked_lines(handle, label, invalid))
                for key in totals:
                    totals[key] += getattr(report, key)
                dead_lettered += [reason for reason in report.reasons if reason != report.full_reason]
                full_reason = full_reason or report.full_reason
            return totals, dead_lettered, full_reason
        finally:
            await bus.close()

    for path in files:
        if str(path) != "-" and not path.is_file():
            fail(f"{path}: no such file" + (" (a directory: pass the files in it, e.g. DIR/*.jsonl)"
                                            if path.is_dir() else ""))
    try:
        totals, dead_lettered, full_reason = asyncio.run(publish())
    except (OSError, asyncio.TimeoutError) as exc:
        fail(f"cannot publish to {url}: {exc}", 1)
    if json_out:
        refused = {"full": totals["full"], "full_reason": full_reason} if totals["full"] else {}
        print(json.dumps({**{k: v for k, v in totals.items() if k != "full"},
                          "invalid": [line.model_dump() for line in invalid], "dead_lettered": dead_lettered,
                          **refused}))
        if totals["full"]:
            raise typer.Exit(1)
        return
    out.print(f"{totals['published']} published · {len(invalid)} invalid (published too: the service "
              f"dead-letters them) · {totals['duplicates']} duplicates (already on the bus) · "
              f"{totals['rejected'] - totals['full']} rejected (too large for the bus, dead-lettered here) · "
              f"from {totals['lines']} lines", markup=False)
    for line in invalid[:MAX_SHOWN]:
        err.print(f"  {line.file}:{line.line}: {line.reason}" + (f" (event {line.event_id})" if line.event_id else ""),
                  markup=False)
    if len(invalid) > MAX_SHOWN:
        err.print(f"  … and {len(invalid) - MAX_SHOWN} more (--json lists every one)", markup=False)
    for reason in dead_lettered[:MAX_SHOWN]:
        err.print(f"  dead-lettered: {reason}", markup=False)
    if invalid or dead_lettered:
        err.print("  see them with their reasons: rtem dlq list", markup=False)
    if totals["full"]:
        fail(f"{totals['full']} line(s) not published: {full_reason} (the same command again is safe: what was "
             "published counts as a duplicate)", 1)


MAX_SHOWN = 20  # invalid lines printed; --json has them all


class InvalidLine(BaseModel):
    """A line of an ingested file that the envelope parser refuses, and why (the reason the DLQ will hold)."""

    file: str
    line: int
    reason: str
    event_id: str | None = None  # when the line had a readable id


def checked_lines(lines: Iterable[bytes], file: str, invalid: list[InvalidLine]) -> Iterator[bytes]:
    """Yield every line as it is, noting in `invalid` each non-blank one `bus.parse_event` refuses, with its
    1-based line number. The check is the bus consumer's own, so what is noted here is what it dead-letters."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                parse_event(line.strip())
            except InvalidEvent as bad:
                invalid.append(InvalidLine(file=file, line=number, reason=bad.reason, event_id=bad.event_id))
        yield line


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
