"""Soak: memory of rtem's pipeline and of its nats-server over a long stream of events, EVENTS trimmed or not.

    python benchmarks/soak.py [--events 500000] [--chunk 5000] [--trim-every 2] [--keep-s 10] [--no-trim]
                              [--duplicate-window-s 120] [--json]

One embedded nats-server and rtem's bus with its default stream bounds. A producer publishes the events of
benchmarks/ingest.py's `synthetic_events` in chunks, never more than `--max-backlog` ahead of the consumer,
while rtem's pipeline (`make_triage`: envelope, dedupe, detection, correlation, SQLite, ack) consumes them on
the `triage` consumer; every `--trim-every` seconds `Bus.trim_events` purges what triage acknowledged more
than `--keep-s` ago, as `rtem run` does every RTEM_EVENTS_TRIM_EVERY_S (`--no-trim`: never, as before issue
16). At the start and after every tenth of the events consumed it samples the RSS of this process and of the
nats-server process (psutil) and the EVENTS stream's size, then prints the samples and the first, last and
maximum of each, so that "RSS flat over the soak" can be judged.

`--keep-s` defaults to 10 s, not `rtem run`'s 3600 s: a soak of a few minutes would otherwise keep every event
it published. The server also remembers every `Nats-Msg-Id` published within the dedupe window (120 s, as
rtem's default), whatever is trimmed: at thousands of events per second that memory grows for two minutes
before it levels off, and `--duplicate-window-s` shows how much of the server's RSS it is. The events are
generated a chunk at a time, so this process's RSS is the pipeline's (and one chunk's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import TOPOLOGY, iter_synthetic_events, make_triage  # noqa: E402
from bus import EVENTS, Bus, BusSettings, EmbeddedNats  # noqa: E402
from rules import Topology  # noqa: E402

MIB = 1 << 20


async def soak(args) -> dict:
    topology = Topology.load(TOPOLOGY)
    me = psutil.Process()
    lines = iter_synthetic_events(args.events, topology)  # made chunk by chunk: held only while published
    with tempfile.TemporaryDirectory(prefix="rtem-soak-") as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        nats = psutil.Process(int(server.pid_file.read_text()))
        bus = await Bus.connect(server.url, BusSettings(events_keep_s=args.keep_s,
                                                        duplicate_window_s=args.duplicate_window_s))
        try:
            await bus.reset_streams()
            triage = make_triage(Path(tmp), topology, "soak")
            return await _run(args, bus, triage, lines, me, nats)
        finally:
            await bus.close()


async def _run(args, bus: Bus, triage, lines: Iterator[bytes], me, nats) -> dict:
    total = args.events
    stop = asyncio.Event()
    processed = 0
    trimmed = 0
    refused = 0
    samples: list[dict] = []
    start = time.perf_counter()

    def counted(stats) -> None:
        nonlocal processed
        processed = stats.processed

    async def sample(share: float) -> None:
        state = (await bus.js.stream_info(EVENTS)).state
        samples.append({"share": share, "consumed": processed, "seconds": round(time.perf_counter() - start, 1),
                        "rss_rtem_mib": round(me.memory_info().rss / MIB, 1),
                        "rss_nats_mib": round(nats.memory_info().rss / MIB, 1),
                        "stream_msgs": state.messages, "stream_mib": round(state.bytes / MIB, 1),
                        "trimmed": trimmed})

    async def produce() -> None:
        nonlocal refused
        while chunk := list(itertools.islice(lines, args.chunk)):
            while True:  # stay at most max_backlog ahead of the consumer, as a steady producer would
                pending, unacked = await _backlog(bus)
                if pending + unacked < args.max_backlog:
                    break
                await asyncio.sleep(0.05)
            report = await bus.publish_lines(chunk)
            while report.full:  # EVENTS full: wait for trimming, send the chunk again (its ids dedupe)
                refused += report.full
                await asyncio.sleep(1)
                report = await bus.publish_lines(chunk)

    async def trim() -> None:
        nonlocal trimmed
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.trim_every)
            except asyncio.TimeoutError:
                trimmed += await bus.trim_events(keep_s=args.keep_s)

    await sample(0.0)
    consumer = asyncio.create_task(bus.consume(triage, batch=args.batch, stop=stop, fetch_timeout=0.2,
                                               on_batch=counted))
    producer = asyncio.create_task(produce())
    trimmer = asyncio.create_task(trim()) if args.trim else None
    next_share = 1
    while next_share <= args.samples:
        if consumer.done():
            consumer.result()  # a consumer that failed says why
            raise RuntimeError("the consumer stopped before consuming every event")
        if processed >= total * next_share / args.samples:
            await sample(next_share / args.samples)
            next_share += 1
            continue
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.gather(producer, consumer, *([trimmer] if trimmer else []))
    return {"events": total, "trim": args.trim, "trim_every_s": args.trim_every, "keep_s": args.keep_s,
            "duplicate_window_s": args.duplicate_window_s,
            "chunk": args.chunk, "max_backlog": args.max_backlog, "seconds": round(elapsed, 1),
            "events_per_s": round(total / elapsed), "trimmed": trimmed, "refused": refused,
            "incidents": len(triage.store.incidents()),
            "samples": samples, "summary": {key: _summary([s[key] for s in samples])
                                            for key in ("rss_rtem_mib", "rss_nats_mib", "stream_msgs", "stream_mib")}}


async def _backlog(bus: Bus) -> tuple[int, int]:
    try:
        return await bus.backlog()
    except Exception:  # the consumer is made by its first fetch
        return 0, 0


def _summary(values: list[float]) -> dict:
    return {"first": values[0], "last": values[-1], "max": max(values)}


def _print(result: dict) -> None:
    mode = (f"trimmed every {result['trim_every_s']:g} s, keeping {result['keep_s']:g} s" if result["trim"]
            else "never trimmed")
    print(f"{result['events']:,} events in {result['seconds']} s ({result['events_per_s']:,} events/s), EVENTS {mode}; "
          f"chunks of {result['chunk']:,}, at most {result['max_backlog']:,} ahead of the consumer; dedupe window "
          f"{result['duplicate_window_s']:g} s")
    print(f"{'consumed':>10} {'seconds':>8} {'rtem RSS MiB':>13} {'nats RSS MiB':>13} {'EVENTS msgs':>12} "
          f"{'EVENTS MiB':>11} {'trimmed':>10}")
    for s in result["samples"]:
        print(f"{s['consumed']:>10,} {s['seconds']:>8} {s['rss_rtem_mib']:>13} {s['rss_nats_mib']:>13} "
              f"{s['stream_msgs']:>12,} {s['stream_mib']:>11} {s['trimmed']:>10,}")
    for key, label in (("rss_rtem_mib", "rtem RSS MiB"), ("rss_nats_mib", "nats-server RSS MiB"),
                       ("stream_msgs", "EVENTS messages"), ("stream_mib", "EVENTS MiB")):
        s = result["summary"][key]
        print(f"{label:<20} first {s['first']:>10,}  last {s['last']:>10,}  max {s['max']:>10,}")
    print(f"trimmed {result['trimmed']:,} · refused (stream full) {result['refused']:,} · incidents "
          f"{result['incidents']:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--chunk", type=int, default=5_000, help="events per publish")
    parser.add_argument("--max-backlog", type=int, default=20_000, help="events the producer may be ahead of the "
                        "consumer (pending + unacknowledged)")
    parser.add_argument("--batch", type=int, default=256, help="events per fetch")
    parser.add_argument("--trim-every", type=float, default=2.0, help="seconds between trims")
    parser.add_argument("--keep-s", type=float, default=10.0, help="acknowledged events younger than this stay")
    parser.add_argument("--no-trim", dest="trim", action="store_false", help="never trim EVENTS (as before issue 16)")
    parser.add_argument("--duplicate-window-s", type=float, default=120.0, help="EVENTS' Nats-Msg-Id dedupe "
                        "window (RTEM_DUPLICATE_WINDOW_S): the server remembers every id published within it")
    parser.add_argument("--samples", type=int, default=10, help="samples after the start, evenly by events consumed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.events < 1 or args.chunk < 1 or args.samples < 1:
        parser.error("--events, --chunk and --samples must be at least 1")
    outcome = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        _print(outcome)
