"""The benchmarks' producer: publishes the generated events from a process of its own, as producers do.

    python benchmarks/publisher.py NATS_URL OUT --events N [--seed S] [--rate R]

rtem consumes events that other processes publish; a publisher in rtem's own process would share its
event loop and its core, and the measure would be of the two together. This one publishes
`benchmarks/ingest.py`'s `synthetic_events(N, seed=S)` to the EVENTS stream, each with its id as
`Nats-Msg-Id`, waiting for JetStream's acks in groups of 1,000 (as `rtem ingest` does): as fast as it can,
or at `--rate` events per second (each at its due moment). It writes OUT, JSON: `start` and `end`
(`time.monotonic()`, the system's monotonic clock, the same in every process on the machine) and, with
`--rate`, `sent`: each event's id and the moment it was published, for latencies measured elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus import Bus  # noqa: E402
from rules import Topology  # noqa: E402


def start(url: str, out: Path, events: int, seed: int, rate: float | None = None) -> subprocess.Popen:
    """This script, started in a process of its own; `finish` waits for it and reads what it wrote."""
    command = [sys.executable, str(Path(__file__).resolve()), url, str(out), "--events", str(events),
               "--seed", str(seed)]
    if rate:
        command += ["--rate", str(rate)]
    return subprocess.Popen(command)


def finish(process: subprocess.Popen, out: Path, timeout: float = 600) -> dict:
    if process.wait(timeout=timeout) != 0:
        raise RuntimeError(f"the publisher failed (exit {process.returncode})")
    return json.loads(out.read_text("utf-8"))


async def publish(url: str, lines: list[bytes], rate: float | None) -> dict:
    bus = await Bus.connect(url)
    sent: dict[str, float] = {}
    try:
        begin = time.monotonic()
        if not rate:
            await bus.publish_lines(lines)
        else:
            pending = []
            for index, line in enumerate(lines):
                if (delay := begin + index / rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                key = json.loads(line)["id"]
                sent[key] = time.monotonic()
                pending.append(await bus.js.publish_async("rtem.events.bench", line, headers={"Nats-Msg-Id": key}))
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        end = time.monotonic()
    finally:
        await bus.close()
    return {"start": begin, "end": end, "events": len(lines), "sent": sent}


def main() -> None:
    from benchmarks.ingest import TOPOLOGY, synthetic_events

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, help="events per second (default: as fast as it can)")
    args = parser.parse_args()
    lines = synthetic_events(args.events, Topology.load(TOPOLOGY), seed=args.seed)
    args.out.write_text(json.dumps(asyncio.run(publish(args.url, lines, args.rate))), "utf-8")


if __name__ == "__main__":
    main()
