"""HTTP ingest throughput: a concurrent load generator against a real `rtem run` on loopback.

    python benchmarks/api.py [--duration 10] [--concurrency 16] [--batch 1 --batch 50] [--client wrk|httpx] [--json]

`rtem run` runs as its own process (embedded NATS, SQLite, the HTTP API) with an operator token; a load
generator posts CloudEvents for `--duration` seconds from `--concurrency` connections, once per batch
size (1: one `application/cloudevents+json` event a request; N: `cloudevents-batch+json` arrays of N).
It reports accepted events/s and requests/s at the HTTP edge, request latency p50/p99, and the rate at
which the service had every accepted event stored (HTTP → JetStream → triage → SQLite).

The load generator is `wrk` (Debian's package, with a Lua script making every event id unique) when it
is installed, else an asyncio httpx client in this process; on 2 cores the Python client needs a core
of its own and bounds the figure, so prefer wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                        help="load generator (default: wrk when installed)")
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
            load = _wrk if args.client == "wrk" else _httpx
            results = [load(url, token, size, args.duration, args.concurrency, data / "rtem.db", run)
                       for run, size in enumerate(batches)]
        finally:
            service.send_signal(signal.SIGTERM)  # rtem run drains and stops its NATS server
            service.wait(30)
    report = {"duration_s": args.duration, "concurrency": args.concurrency, "cpu_count": os.cpu_count(),
              "client": args.client, "runs": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"HTTP ingest, {args.concurrency} connections ({args.client}), {args.duration:.0f} s per run, "
          f"{os.cpu_count()} CPUs")
    print(f"{'batch':>6} {'requests/s':>11} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'stored events/s':>16}")
    for r in results:
        print(f"{r['batch']:>6} {r['requests_per_s']:>11.0f} {r['events_per_s']:>9.0f} {r['latency_ms']['p50']:>7.1f} "
              f"{r['latency_ms']['p99']:>7.1f} {r['errors']:>6} {r['stored_events_per_s']:>16.0f}")


WRK_SCRIPT = """
-- `tid` is a global each thread gets from setup(); a local of the same name would hide it
local n, threads = 0, 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function request()
  n = n + 1
  local events = {}
  for k = 1, BATCH do
    local i = n * BATCH + k
    events[k] = string.format('{"specversion":"1.0","id":"wrk-RUN-%d-%d","source":"/bench/http",'
      .. '"type":"rtem.metric.sample","time":"2024-05-01T12:%02d:%02dZ","subject":"frontend-%d",'
      .. '"data":{"severity":"info","message":"ok","attributes":{"cpu":0.2}}}', tid, i, math.floor(i / 60) % 60, i % 60, i % 3)
  end
  local body = BATCH > 1 and ("[" .. table.concat(events, ",") .. "]") or events[1]
  return wrk.format("POST", "/api/v1/events", nil, body)
end
function done(summary, latency, requests)
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout))
end
"""


def _wrk(url: str, token: str, batch: int, duration: float, concurrency: int, db: Path, run: int) -> dict:
    before = _stored(db)
    content_type = "application/cloudevents-batch+json" if batch > 1 else "application/cloudevents+json"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("BATCH", str(batch)).replace("RUN", str(run)))
    started = time.perf_counter()
    done = subprocess.run(["wrk", "-t", "2", "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--latency", "-s", script.name,
                           "-H", f"Authorization: Bearer {token}", "-H", f"Content-Type: {content_type}", url],
                          capture_output=True, text=True, check=True)
    os.unlink(script.name)
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    elapsed = result["duration_us"] / 1e6
    requests = result["requests"]
    events = (requests - result["errors"]) * batch
    stored_elapsed = _wait_stored(db, before + events, started, elapsed)
    return {"batch": batch, "requests": requests, "events": events, "errors": result["errors"],
            "requests_per_s": requests / elapsed, "events_per_s": events / elapsed,
            "latency_ms": {"p50": result["p50_us"] / 1000, "p99": result["p99_us"] / 1000},
            "stored": _stored(db) - before, "stored_events_per_s": (_stored(db) - before) / stored_elapsed}


def _wait_stored(db: Path, target: int, started: float, elapsed: float) -> float:
    """Seconds from the start of the load until the store holds `target` events (at most 120 s more)."""
    while _stored(db) < target and time.perf_counter() - started < elapsed + 120:
        time.sleep(0.05)
    return time.perf_counter() - started


def _httpx(*args) -> dict:
    return asyncio.run(_load(*args))


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
    stored_elapsed = await asyncio.to_thread(_wait_stored, db, before + counts["events"], started, elapsed)
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
