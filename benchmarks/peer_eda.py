"""rtem end to end against Event-Driven Ansible's ansible-rulebook on the same generated events.

    python benchmarks/peer_eda.py [--events 100000] [--repeat 3] [--venv DIR] [--json]

Both get the same events (benchmarks/ingest.py's generated day of telemetry: mostly healthy info events,
about one in ten an anomaly or an error that a detection matches), and each does what it is for:
  rtem   a producer in a process of its own (benchmarks/publisher.py, as rtem's producers are other
         processes) publishes every event to an embedded nats-server's EVENTS stream, and rtem consumes
         it through the pipeline (validate, dedupe, detect with rtem's detections, correlate, record in
         SQLite, ack); timed from the first publish until every event is committed and acked.
  eda    ansible-rulebook 1.3.2 (Drools, in a JVM) with rtem's plain detections written as rulebook
         conditions with `action: none`, fed by a source plugin that puts the events on its queue as fast
         as they are taken, then a final event whose rule shuts the rulebook down. Its start (the JVM, the
         rulebook's compilation) is timed apart by a run with no events and taken off: throughput is
         events / (time with the events - time without).
They run alternately, `--repeat` times, and the ratio rtem / eda is given per repetition (the machine is
shared: only ratios measured side by side mean anything) with min / median / max.

ansible-rulebook lives in a virtual environment of its own (`--venv`, made on first use from the package
index pip is configured with) and needs a Java runtime (17 or later); without one this says so and exits 0.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import publisher  # noqa: E402
from benchmarks.ingest import TOPOLOGY, make_triage, synthetic_events  # noqa: E402
from bus import Bus, BusSettings, EmbeddedNats  # noqa: E402
from rules import Detector, Topology, load_detections  # noqa: E402

EDA_VERSION = "1.3.2"
SEED = 7  # of the generated events, the same for both
DEFAULT_VENV = Path.home() / ".cache" / "rtem" / f"ansible-rulebook-{EDA_VERSION}"

# rtem's plain detections (rules/detect/default.yaml: one event, no window), as rulebook conditions over
# the CloudEvents envelope: rtem's `severity` and `attributes` live under `data` there.
CONDITIONS = {
    "metric-anomaly": 'event.type == "rtem.metric.anomaly" and event.data.severity != "info"',
    "trace-anomaly": 'event.type == "rtem.trace.anomaly" and event.data.severity != "info"',
    "alert-firing": 'event.type == "rtem.alert" and event.data.attributes.status != "resolved" '
                    'and event.data.severity != "info"',
    "error-event": 'event.data.severity in ["error", "critical"]',
    "health-failing": 'event.type == "rtem.health" and event.data.attributes.status in ["failing", "down", "unhealthy"]',
}

SOURCE_PLUGIN = '''\
"""Puts the benchmark's events on the rulebook's queue as fast as they are taken, then the last one."""
import json


async def main(queue, args):
    with open(args["path"], "rb") as lines:
        for line in lines:
            await queue.put(json.loads(line))
    await queue.put({"rtem_bench_done": True})
'''


def rulebook(events: Path) -> str:
    rules = [f"      - name: {name}\n        condition: {condition}\n        action:\n          none:\n"
             for name, condition in CONDITIONS.items()]
    rules.append("      - name: done\n        condition: event.rtem_bench_done == true\n        action:\n"
                 "          shutdown:\n            delay: 0\n")
    return ("---\n- name: rtem detections\n  hosts: all\n  sources:\n"
            f"    - rtem_events:\n        path: {json.dumps(str(events))}\n  rules:\n" + "".join(rules))


def java_home() -> Path | None:
    """The Java runtime's home (JAVA_HOME, else the one `java` on PATH belongs to), if it is 17 or later."""
    home = Path(os.environ["JAVA_HOME"]) if os.environ.get("JAVA_HOME") else None
    java = home / "bin" / "java" if home else (Path(p) if (p := shutil.which("java")) else None)
    if java is None or not java.exists():
        return None
    version = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    try:
        major = int(version.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return None
    return (home or java.resolve().parent.parent) if major >= 17 else None


def ensure_venv(venv: Path) -> Path:
    """The ansible-rulebook executable in `venv`, installed there first if missing."""
    exe = venv / "bin" / "ansible-rulebook"
    if not exe.exists():
        print(f"installing ansible-rulebook {EDA_VERSION} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # ansible-core: the rulebook looks its sources and filters up through ansible-galaxy
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"ansible-rulebook=={EDA_VERSION}", "ansible-core"],
                       check=True)
    return exe


class Eda:
    """One ansible-rulebook set-up in `workdir`: the rulebook, the source plugin, an inventory."""

    def __init__(self, exe: Path, java: Path, workdir: Path, lines: list[bytes]):
        self.exe, self.workdir = exe, workdir
        self.env = {**os.environ, "JAVA_HOME": str(java),  # and its venv first: it runs ansible-galaxy
                    "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        sources = workdir / "sources"
        sources.mkdir(parents=True, exist_ok=True)
        (sources / "rtem_events.py").write_text(SOURCE_PLUGIN)
        (workdir / "inventory.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
        self.rulebooks = {}
        for name, chosen in (("events", lines), ("empty", [])):
            path = workdir / f"{name}.jsonl"
            path.write_bytes(b"".join(line + b"\n" for line in chosen))
            (workdir / f"{name}.yml").write_text(rulebook(path))
            self.rulebooks[name] = workdir / f"{name}.yml"

    def run(self, which: str) -> float:
        start = time.perf_counter()
        done = subprocess.run([str(self.exe), "--rulebook", str(self.rulebooks[which]), "-i",
                               str(self.workdir / "inventory.yml"), "-S", str(self.workdir / "sources")],
                              cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=1800)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"ansible-rulebook failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return elapsed

    def rate(self, n: int) -> float:
        """Events per second past the rulebook's own start (timed by a run with no events)."""
        empty = self.run("empty")
        full = self.run("events")
        return n / max(full - empty, 1e-9)


async def rtem_rate(server_url: str, topology: Topology, workdir: Path, events: int, batch: int) -> float:
    """Events per second from the first publish (by a producer in a process of its own,
    benchmarks/publisher.py) until every event is committed and acked here."""
    bus = await Bus.connect(server_url, BusSettings(max_ack_pending=max(2048, batch)))
    try:
        await bus.reset_streams()
        triage = make_triage(workdir, topology, f"rtem-{time.monotonic_ns()}")
        stop = asyncio.Event()
        consumer = asyncio.create_task(bus.consume(triage, batch=batch, stop=stop, fetch_timeout=0.05))
        out = workdir / f"publisher-{time.monotonic_ns()}.json"
        producer = publisher.start(server_url, out, events, seed=SEED)
        while producer.poll() is None or triage.stats.events < events or await bus.backlog() != (0, 0):
            if producer.poll() not in (None, 0):
                break
            await asyncio.sleep(0.005)
        done = time.monotonic()
        started = publisher.finish(producer, out)["start"]
        stop.set()
        await consumer
        triage.store.close()
        return events / (done - started)
    finally:
        await bus.close()


def matching_share(lines: list[bytes], topology: Topology) -> float:
    """The share of events that at least one of the plain detections above matches, by rtem's detector."""
    from bus._envelope import parse_event

    loaded = load_detections()
    plain = replace(loaded, detections=[d for d in loaded.detections if d.id in CONDITIONS])
    assert {d.id for d in plain.detections} == set(CONDITIONS), "the translated detections are rtem's"
    detector = Detector(plain, topology)
    matched = sum(1 for line in lines if detector.observe(parse_event(line)))
    return matched / len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="ansible-rulebook's virtual environment")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    java = java_home()
    if java is None:
        print("peer_eda: ansible-rulebook needs a Java runtime, 17 or later (Debian: apt-get install "
              "openjdk-17-jre-headless), and none was found: nothing measured.")
        return
    exe = ensure_venv(args.venv)
    topology = Topology.load(TOPOLOGY)
    lines = synthetic_events(args.events, topology, seed=SEED)
    share = matching_share(lines, topology)
    reps = []
    with tempfile.TemporaryDirectory(prefix="rtem-peer-eda-") as tmp:
        workdir = Path(tmp)
        eda = Eda(exe, java, workdir / "eda", lines)
        with EmbeddedNats(workdir / "nats") as server:
            for index in range(args.repeat):
                rtem = asyncio.run(rtem_rate(server.url, topology, workdir, len(lines), args.batch))
                other = eda.rate(len(lines))
                reps.append({"rtem_per_s": round(rtem), "eda_per_s": round(other), "ratio": round(rtem / other, 2)})
                if not args.json:
                    print(f"repetition {index + 1}: rtem {rtem:,.0f} ev/s · ansible-rulebook {other:,.0f} ev/s · "
                          f"ratio {rtem / other:.2f}", file=sys.stderr)
    ratios = [r["ratio"] for r in reps]
    report = {"events": args.events, "matching_share": round(share, 3), "batch": args.batch,
              "ansible_rulebook": EDA_VERSION, "repetitions": reps,
              "ratio": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}}
    if args.json:
        print(json.dumps(report))
        return
    print(f"$ python benchmarks/peer_eda.py --events {args.events} --repeat {args.repeat}")
    print(f"{args.events:,} events, {share:.1%} matched by a detection; rtem end to end (publish → committed "
          f"and acked) against ansible-rulebook {EDA_VERSION} (its start taken off)")
    for index, r in enumerate(reps, 1):
        print(f"  {index}: rtem {r['rtem_per_s']:>8,} ev/s   ansible-rulebook {r['eda_per_s']:>8,} ev/s   "
              f"ratio {r['ratio']:.2f}")
    print(f"ratio rtem / ansible-rulebook: min {min(ratios):.2f} · median {statistics.median(ratios):.2f} · "
          f"max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
