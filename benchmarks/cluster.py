"""Cluster: incidents spread over several `rtem run` workers, and what SIGKILLing one of them costs.

    python benchmarks/cluster.py [--json] [--quick] [--incidents 12] [--diagnosis-s 1] [--concurrency 1]
                                 [--workers 1,2,3] [--kills 10] [--takeovers 5] [--lease-s 6] [--keep]

Everything is real and on this machine: a three-server JetStream cluster (tests/nats_cluster.py, streams
with three copies), PostgreSQL (tests/postgres.py: the machine's at 127.0.0.1:5432, else embedded; a fresh
database per run), `rtem run` worker processes (tests/cluster_procs.py) on the boutique topology, a target
that applies each idempotency key once and counts, and — for the throughput — the scripted
OpenAI-compatible server of tests/llm_server.py answering every diagnosis after `--diagnosis-s`.

  throughput   with 1, 2 and 3 workers (each moving at most `--concurrency` incident threads at once,
               RTEM_WORKER_CONCURRENCY), a burst of `--incidents` independent faults (one service each,
               400 s of event time apart, so none merge) is published at once; healthy samples keep event
               time going for verification. Measured: from the burst until every incident is final, as
               incidents per minute, and the ratio to one worker (target: 2 workers >= 1.8x).
  failover     3 workers, the deterministic reasoner; `--kills` times, with a fault half published, the
               leader is SIGKILLed; measured until another worker holds a live leader lease (target
               p50 and max <= 10 s); the killed worker is started again before the next kill.
  takeover     `--takeovers` times, an incident's owner is SIGKILLed while the target holds its action's
               answer; measured until another worker holds a live `incident:<id>` lease (target <= 15 s).
  integrity    across every run and kill: events lost, incidents duplicated (a fault in two incidents),
               actions executed twice (a key sent again after the ledger recorded it done, or one fault's
               action applied under two keys). Each must be 0; the exit status is 1 otherwise.

--quick: 1 and 2 workers, 4 incidents, 2 leader kills, 1 takeover, 3 s leases (about 1.5 minutes).
Progress goes to stderr; the table (or --json) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._main import run_benchmark  # noqa: E402

from bus import Bus, BusSettings  # noqa: E402
from tests.cluster_procs import (CountingTarget, WorkerCluster, faults,  # noqa: E402
                                 fresh_database, integrity, publish, samples, wait_async)
from tests.llm_server import Delay, ScriptedLLM, good_diagnosis, good_proposals  # noqa: E402
from tests.nats_cluster import NatsCluster  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

TARGET_RATIO = 1.8  # 2 workers vs 1
TARGET_FAILOVER_S = 10.0
TARGET_TAKEOVER_S = 15.0
ZERO = ("events_lost", "events_recorded_twice", "incidents_duplicated", "faults_undetected", "actions_executed_twice")
OWNS = re.compile(r"worker (\S+) owns incident (\S+)")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- throughput ------------------------------------------------------------------------------------------


async def throughput(args, nats: NatsCluster, server_url: str, llm: ScriptedLLM, workdir: Path,
                     workers: int) -> tuple[dict, dict]:
    """One run of `workers` workers on a fresh database and fresh streams: the burst until all are final."""
    env = {"RTEM_LLM": "openai", "RTEM_LLM_BASE_URL": llm.url, "RTEM_LLM_API_KEY": "scripted",
           "RTEM_LLM_MODEL": "scripted", "RTEM_LLM_TIMEOUT_S": str(max(30.0, args.diagnosis_s * 5)),
           "RTEM_WORKER_CONCURRENCY": str(args.concurrency), "RTEM_VERIFY_QUIET_S": "10",
           "RTEM_VERIFY_DEADLINE_S": "100000"}
    names = [f"w{i + 1}" for i in range(workers)]
    with fresh_database(server_url) as url, \
            WorkerCluster(workdir / f"throughput-{workers}", nats.url, url, replicas=3, lease_s=args.lease_s,
                          env=env) as cluster:
        bus = await Bus.connect(nats.url, BusSettings(replicas=3))
        try:
            await bus.reset_streams()
            target = CountingTarget()
            await target.attach(bus.nc)
            await asyncio.to_thread(start, cluster, names)
            planted = faults(f"t{workers}-", args.incidents)
            burst = [e for f in planted for e in f.events]
            progress(f"throughput: {workers} worker(s) ready; {len(planted)} incidents at once")
            began = time.monotonic()
            await publish(bus, burst)
            sent = [e["id"] for e in burst]
            # Healthy samples keep event time going, 5 event seconds every 0.2 s, for verification.
            clock = planted[-1].start_s + 60
            deadline = began + args.timeout
            done = False
            while time.monotonic() < deadline:
                if await asyncio.to_thread(cluster.all_final, len(planted)):
                    done = True
                    break
                tick = samples(f"tick{workers}-{int(clock)}-", "emailservice2-0", clock, 1)
                await publish(bus, tick)
                sent += [e["id"] for e in tick]
                clock += 5
                await asyncio.sleep(0.2)
            seconds = time.monotonic() - began
            await asyncio.sleep(1)  # the last ticks are recorded
            rows = await asyncio.to_thread(cluster.incidents)
            owners: dict[str, str] = {}
            for name in names:
                for worker, incident in OWNS.findall(cluster[name].text()):
                    owners.setdefault(incident, worker)
            per_worker = {name: sum(1 for w in owners.values() if w == name) for name in names}
            checked = await asyncio.to_thread(integrity, cluster, sent, planted, target)
        finally:
            await bus.close()
            await asyncio.to_thread(cluster.close, 3)  # its database is dropped next: no need for a clean stop
    completed = sum(r["status"] in ("resolved", "escalated") for r in rows)
    run = {"workers": workers, "incidents": len(planted), "completed": completed, "all_final": done,
           "seconds": round(seconds, 2), "per_minute": round(completed / seconds * 60, 1),
           "statuses": _count(r["status"] for r in rows), "driven_by": per_worker}
    progress(f"throughput: {workers} worker(s): {completed} incidents in {seconds:.1f}s "
             f"({run['per_minute']}/min), driven by {per_worker}")
    return run, checked


# -- failover and takeover -------------------------------------------------------------------------------


async def kills(args, nats: NatsCluster, server_url: str, workdir: Path) -> tuple[dict, dict, dict]:
    """Three workers on the deterministic reasoner: SIGKILL the leader `--kills` times, then an incident's
    owner `--takeovers` times (mid-action), and time how long until someone else holds the lease."""
    names = ["w1", "w2", "w3"]
    failover_s: list[float] = []
    takeover_s: list[float] = []
    not_taken: list[str] = []
    with fresh_database(server_url) as url, \
            WorkerCluster(workdir / "kills", nats.url, url, replicas=3, lease_s=args.lease_s,
                          env={"RTEM_ACK_WAIT_S": f"{min(2.0, args.lease_s / 2):g}"}) as cluster:
        bus = await Bus.connect(nats.url, BusSettings(replicas=3))
        try:
            await bus.reset_streams()
            # scale_out is applied, shed_load fails, scale_out is compensated: escalated, no verification wait
            target = CountingTarget(fail={"shed_load"})
            await target.attach(bus.nc)
            await asyncio.to_thread(start, cluster, names)
            planted = faults("f", args.kills + args.takeovers)
            sent: list[str] = []
            for i in range(args.kills):
                fault = planted[i]
                await publish(bus, fault.events[:5])
                sent += fault.event_ids[:5]
                await wait_async(lambda: cluster.incident_of(fault.events[0]["id"]), 60, cluster.logs)
                old = cluster.leader().holder
                killed = cluster.kill(old)
                await publish(bus, fault.events[5:])
                sent += fault.event_ids[5:]
                try:
                    await wait_async(lambda: (lease := cluster.leader()).live and lease.holder != old, 60,
                                     interval=0.05)
                    failover_s.append(time.monotonic() - killed)
                    progress(f"failover {i + 1}/{args.kills}: killed leader {old}; "
                             f"{cluster.leader().holder} leads after {failover_s[-1]:.2f}s")
                except AssertionError:
                    progress(f"failover {i + 1}/{args.kills}: no new leader within 60s")
                cluster.start(old)
                await asyncio.to_thread(cluster.wait_ready, names)
            target.hold_s = {"scale_out": 4 * args.lease_s}  # the owner dies waiting for the answer
            for j in range(args.takeovers):
                fault = planted[args.kills + j]
                await publish(bus, fault.events)
                sent += fault.event_ids
                incident = await wait_async(lambda: cluster.incident_of(fault.events[0]["id"]), 60, cluster.logs)
                await wait_async(lambda: incident in {i for _, _, i in target.applied.values()}, 60, cluster.logs)
                owner = cluster.owner(incident)
                if not owner.live:
                    not_taken.append(f"{incident}: no live incident:{incident} lease (per-incident ownership?)")
                    progress(f"takeover {j + 1}/{args.takeovers}: {not_taken[-1]}")
                    continue
                killed = cluster.kill(owner.holder)
                try:
                    await wait_async(lambda: (lease := cluster.owner(incident)).live and lease.holder != owner.holder,
                                     3 * TARGET_TAKEOVER_S, interval=0.05)
                    takeover_s.append(time.monotonic() - killed)
                    progress(f"takeover {j + 1}/{args.takeovers}: killed {owner.holder}, the owner of {incident}; "
                             f"{cluster.owner(incident).holder} owns it after {takeover_s[-1]:.2f}s")
                except AssertionError:
                    not_taken.append(f"{incident}: still {cluster.owner(incident)} {3 * TARGET_TAKEOVER_S:g}s "
                                     f"after {owner.holder} was killed")
                    progress(f"takeover {j + 1}/{args.takeovers}: {not_taken[-1]}")
                cluster.start(owner.holder)
                await asyncio.to_thread(cluster.wait_ready, names)
            progress("waiting for every incident to be final")
            try:
                await wait_async(lambda: cluster.all_final(len(planted)), args.timeout)
            except AssertionError:
                progress("not every incident is final: " + json.dumps(cluster.incidents()))
            checked = await asyncio.to_thread(integrity, cluster, sent, planted, target)
            checked["unfinished"] = [r["id"] for r in cluster.incidents()
                                     if r["status"] not in ("resolved", "escalated", "merged")]
            if any(checked[k] for k in ZERO) or checked["unfinished"]:
                checked["logs"] = cluster.logs()
        finally:
            await bus.close()
            await asyncio.to_thread(cluster.close, 3)
    failover = {"kills": args.kills, "measured": len(failover_s), "lease_s": args.lease_s, **spread(failover_s),
                "each_s": [round(s, 2) for s in failover_s], "target_s": TARGET_FAILOVER_S}
    failover["met"] = bool(failover_s) and len(failover_s) == args.kills and failover["max_s"] <= TARGET_FAILOVER_S
    takeover = {"kills": args.takeovers, "measured": len(takeover_s), "lease_s": args.lease_s, **spread(takeover_s),
                "each_s": [round(s, 2) for s in takeover_s], "not_taken_over": not_taken,
                "target_s": TARGET_TAKEOVER_S}
    takeover["met"] = bool(takeover_s) and not not_taken and takeover["max_s"] <= TARGET_TAKEOVER_S
    return failover, takeover, checked


# -- the run -----------------------------------------------------------------------------------------------


async def run(args, workdir: Path) -> dict:
    began = time.monotonic()
    with ExitStack() as stack:
        server_url = stack.enter_context(postgres_server())
        nats = NatsCluster(workdir / "nats")
        stack.callback(nats.stop)
        await asyncio.to_thread(nats.start)
        llm = ScriptedLLM().start()
        stack.callback(llm.stop)
        llm.default["diagnosis"] = Delay(args.diagnosis_s, lambda body: good_diagnosis(body, 0))
        llm.default["proposals"] = good_proposals
        progress(f"NATS cluster {nats.url}; PostgreSQL {server_url.split('@')[-1]}; LLM {llm.url}")
        runs, checks = [], []
        for n in args.workers:
            result, checked = await throughput(args, nats, server_url, llm, workdir, n)
            runs.append(result)
            checks.append(checked)
        one = next((r for r in runs if r["workers"] == 1), None)
        for r in runs:
            r["ratio"] = round(r["per_minute"] / one["per_minute"], 2) if one and one["per_minute"] else None
        two = next((r for r in runs if r["workers"] == 2), None)
        failover, takeover, checked = await kills(args, nats, server_url, workdir)
        checks.append(checked)
    total = {k: sum(c[k] for c in checks) for k in ("events_sent", "events_recorded", *ZERO, "actions_executed")}
    total["twice_detail"] = [d for c in checks for d in c["twice_detail"]]
    total["unfinished"] = checked.get("unfinished", [])
    report = {
        "throughput": {"incidents": args.incidents, "diagnosis_s": args.diagnosis_s, "concurrency": args.concurrency,
                       "runs": runs, "target_ratio_2_workers": TARGET_RATIO,
                       "met": bool(two and two["ratio"] is not None and two["ratio"] >= TARGET_RATIO)},
        "failover": failover,
        "takeover": takeover,
        "integrity": total,
        "quick": args.quick,
        "wall_s": round(time.monotonic() - began, 1),
    }
    if "logs" in checked:
        report["logs_tail"] = checked["logs"]
    return report


def start(cluster: WorkerCluster, names: list[str]) -> None:
    cluster.start(*names)
    cluster.wait_ready(names)


def spread(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "max_s": None}
    return {"p50_s": round(statistics.median(values), 2), "max_s": round(max(values), 2)}


def _count(values) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def failed(report: dict) -> bool:
    return any(report["integrity"][k] for k in ZERO)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true",
                        help="1 and 2 workers, 4 incidents, 2 leader kills, 1 takeover, 3 s leases")
    parser.add_argument("--incidents", type=int, default=None, help="incidents in the throughput burst (12)")
    parser.add_argument("--diagnosis-s", type=float, default=1.0, help="how long the scripted LLM takes per diagnosis")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="RTEM_WORKER_CONCURRENCY: incident threads a worker moves at once (1: each worker is "
                             "bound by the diagnosis time, which is what spreading incidents helps)")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="worker counts for the throughput, comma-separated (1,2,3)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs of the leader (10)")
    parser.add_argument("--takeovers", type=int, default=None, help="SIGKILLs of an incident's owner mid-action (5)")
    parser.add_argument("--lease-s", type=float, default=None, help="RTEM_LEADER_LEASE_S (6, the default; quick: 3)")
    parser.add_argument("--timeout", type=float, default=180.0, help="wall seconds to wait for a run's incidents")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker logs) and say where")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, short in (("incidents", 12, 4), ("workers", [1, 2, 3], [1, 2]), ("kills", 10, 2),
                              ("takeovers", 5, 1), ("lease_s", 6.0, 3.0)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(__file__, options(argv), argv, run, print_report, failed)


def print_report(r: dict) -> None:
    t, f, k, i = r["throughput"], r["failover"], r["takeover"], r["integrity"]
    print(f"command                {r['command']}")
    print(f"throughput             {t['incidents']} incidents at once, diagnosis {t['diagnosis_s']:g} s, "
          f"concurrency {t['concurrency']} per worker")
    print("  workers   seconds   incidents/min   vs 1 worker   driven by")
    for run in t["runs"]:
        mark = "" if run["all_final"] else f"  (NOT all final: {run['statuses']})"
        print(f"  {run['workers']:>7}   {run['seconds']:>7.1f}   {run['per_minute']:>13.1f}   "
              f"{run['ratio'] if run['ratio'] is not None else '-':>11}   {run['driven_by']}{mark}")
    print(f"  target: 2 workers >= {t['target_ratio_2_workers']}x one: {'met' if t['met'] else 'NOT met'}")
    print(f"failover (leader)      {f['measured']} of {f['kills']} kills, lease {f['lease_s']:g} s: "
          f"p50 {f['p50_s']} s · max {f['max_s']} s (target <= {f['target_s']:g} s: "
          f"{'met' if f['met'] else 'NOT met'})")
    print(f"takeover (incident)    {k['measured']} of {k['kills']} kills: p50 {k['p50_s']} s · max {k['max_s']} s "
          f"(target <= {k['target_s']:g} s: {'met' if k['met'] else 'NOT met'})")
    for line in k["not_taken_over"]:
        print(f"  not taken over: {line}")
    print(f"events                 sent {i['events_sent']} · recorded {i['events_recorded']} · lost {i['events_lost']}"
          f" · recorded twice {i['events_recorded_twice']}")
    print(f"incidents              duplicated {i['incidents_duplicated']} · undetected {i['faults_undetected']}"
          f" · unfinished after the kills {len(i['unfinished'])}")
    print(f"actions                executed {i['actions_executed']} · executed twice {i['actions_executed_twice']}")
    for line in i["twice_detail"]:
        print(f"  executed twice: {line}")
    print(f"wall time              {r['wall_s']} s")
    if "workdir" in r:
        print(f"logs kept in           {r['workdir']}")
    if "logs_tail" in r:
        print("worker logs (tail):\n" + r["logs_tail"])


if __name__ == "__main__":
    sys.exit(main())
