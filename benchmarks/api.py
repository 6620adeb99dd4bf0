"""HTTP ingest throughput: a concurrent load generator against a real `rtem run` on loopback.

    python benchmarks/api.py [--duration 10] [--concurrency 16] [--batch 1 --batch 50] [--json]

`rtem run` runs as its own process (embedded NATS, SQLite, the HTTP API) with an operator token;
this process posts CloudEvents for `--duration` seconds from `--concurrency` connections, once per
batch size (1: one `application/cloudevents+json` event a request; N: `cloudevents-batch+json` arrays
of N). It reports accepted events/s and requests/s at the HTTP edge, request latency p50/p99, and how
long the service took to have every accepted event stored (HTTP → JetStream → triage → SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.tokens import TokenStore  # noqa: E402

TOPOLOGY = ROOT / "agent" / "examples" / "boutique-topology.json"
SUBJECTS = [f"{s}-{i}" for s in ("frontend", "cartservice", "checkoutservice", "paymentservice") for i in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per batch size")
    parser.add_argument("--concurrency", type=int, default=16, help="connections posting at once")
    parser.add_argument("--batch", type=int, action="append", help="events per request (repeatable; default 1 and 50)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    batches = args.batch or [1, 50]
    with tempfile.TemporaryDirectory(prefix="rtem-api-bench-") as tmp:
        data = Path(tmp) / "data"
        token = TokenStore(data / "rtem.db").create("bench", "operator")[0]
        port = _free_port()
        service = _start_service(data, port)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, service)
            results = [asyncio.run(_load(url, token, size, args.duration, args.concurrency, data / "rtem.db", run))
                       for run, size in enumerate(batches)]
        finally:
            service.send_signal(signal.SIGTERM)  # rtem run drains and stops its NATS server
            service.wait(30)
    report = {"duration_s": args.duration, "concurrency": args.concurrency, "cpu_count": os.cpu_count(),
              "runs": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"HTTP ingest, {args.concurrency} connections, {args.duration:.0f} s per run, {os.cpu_count()} CPUs")
    print(f"{'batch':>6} {'requests/s':>11} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'stored events/s':>16}")
    for r in results:
        print(f"{r['batch']:>6} {r['requests_per_s']:>11.0f} {r['events_per_s']:>9.0f} {r['latency_ms']['p50']:>7.1f} "
              f"{r['latency_ms']['p99']:>7.1f} {r['errors']:>6} {r['stored_events_per_s']:>16.0f}")


async def _load(url: str, token: str, batch: int, duration: float, concurrency: int, db: Path,
                run: int) -> dict:
    latencies: list[float] = []
    counts = {"events": 0, "errors": 0, "sent": 0}
    before = _stored(db)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {token}",
               "content-type": "application/cloudevents-batch+json" if batch > 1 else "application/cloudevents+json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        deadline = time.perf_counter() + duration

        async def worker(w: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                events = [_event(f"r{run}-w{w}-{n}-{k}", n + k) for k in range(batch)]
                n += batch
                body = json.dumps(events if batch > 1 else events[0])
                started = time.perf_counter()
                response = await http.post("/api/v1/events", content=body)
                latencies.append(time.perf_counter() - started)
                counts["sent"] += len(events)
                if response.status_code == 202:
                    counts["events"] += response.json()["accepted"]
                else:
                    counts["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    # Every accepted event must reach the store; how long that takes is the end-to-end rate.
    target = before + counts["events"]
    while _stored(db) < target and time.perf_counter() - started < elapsed + 120:
        await asyncio.sleep(0.05)
    stored_elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"batch": batch, "requests": len(latencies), "events": counts["events"], "errors": counts["errors"],
            "requests_per_s": len(latencies) / elapsed, "events_per_s": counts["events"] / elapsed,
            "latency_ms": {"p50": statistics.median(ordered) * 1000,
                           "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000},
            "stored": _stored(db) - before, "stored_events_per_s": (_stored(db) - before) / stored_elapsed}


def _event(event_id: str, n: int) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/bench/http", "type": "rtem.metric.sample",
            "time": f"2024-05-01T12:{(n // 60) % 60:02d}:{n % 60:02d}Z", "subject": SUBJECTS[n % len(SUBJECTS)],
            "data": {"severity": "info", "message": "ok", "attributes": {"cpu": 0.2}}}


def _stored(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def _start_service(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "RTEM_DATA_DIR": str(data)}
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--topology", str(TOPOLOGY), "--http-port",
                             str(port), "--metrics-port", "0", "--log-format", "json"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(url: str, service: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"rtem run exited: {service.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("rtem run did not become ready")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
