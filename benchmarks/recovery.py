"""Recovery over many injected faults: detection and decision latency, MTTR, and double execution.

    python benchmarks/recovery.py [--waves 17] [--speed 40] [--json]

Runs the real service (embedded NATS, SQLite, the deterministic reasoner, guard, executors) against
the demo's simulated shop and injects waves of three disruptions (two instance crashes and a bad
deploy, on services that are not neighbours), each wave 400 s of event time after the previous one
(so correlation keeps waves apart). Approvals are granted by the demo operator after one wall
second. Reported:
  detection latency   fault start → first signal of its incident (event time)
  decision latency    incident opened → guard verdicts recorded (wall time)
  MTTR                first event of the incident → verified recovery (event time)
  applied twice       steps the target applied more than once (must be 0)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.demo.runner import run_demo  # noqa: E402
from agent.demo.scenarios import bad_deploy, instance_crash  # noqa: E402

WAVE_S = 400.0
# Each wave disrupts three services that are not neighbours in the topology (so each fault is its own
# incident), rotating through the shop; payments is tier 1, so its restarts wait for the operator.
TRIPLES = (("auth", "inventory", "shipping"), ("catalog", "payments", "fulfillment"), ("orders", "auth", "shipping"))


def plan(waves: int):
    scenarios, start = [], 30.0
    for wave in range(waves):
        crash_a, crash_b, deploy = TRIPLES[wave % len(TRIPLES)]
        scenarios += [instance_crash(f"{crash_a}-{wave % 2}").at(start),
                      instance_crash(f"{crash_b}-{(wave + 1) % 2}").at(start + 10),
                      bad_deploy(deploy, version=f"9.{wave + 1}.0", previous=f"9.{wave}.0").at(start + 20)]
        start += WAVE_S
    return scenarios


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 2)


async def main(args) -> dict:
    scenarios = plan(args.waves)
    result = await run_demo(speed=args.speed, plan=scenarios, approve_after_s=1.0, live=False,
                            timeout_s=args.waves * WAVE_S / args.speed + 120)
    incidents = {r["id"]: r for r in result.incidents}
    detection = []
    for fault in result.faults:
        if fault["fixed_by"] and fault["began_s"] is not None:
            incident = incidents.get(fault["fixed_by"][0].split("/")[0])
            if incident:
                detection.append(incident["first_ts"] - (result.sim_start + fault["began_s"]))
    opened, decided = {}, {}
    for record in result.audit:
        at = datetime.fromisoformat(record["at"].replace("Z", "+00:00")).timestamp()
        if record["kind"] == "incident.opened":
            opened.setdefault(record["incident_id"], at)
        if record["kind"] == "action.verdict":
            decided.setdefault(record["incident_id"], at)
    decision = [decided[i] - opened[i] for i in decided if i in opened]
    mttr = [r["mttr_s"] for r in result.incidents if r.get("mttr_s")]
    twice = sum(n - 1 for n in Counter(key for key, _, _ in result.applied).values() if n > 1)
    return {
        "faults": len(scenarios), "resolved_faults": sum(f["status"] == "resolved" for f in result.faults),
        "incidents": len(result.incidents), "resolved_incidents": sum(r["status"] == "resolved" for r in result.incidents),
        "detection_latency_s": {"p50": pct(detection, 50), "p99": pct(detection, 99), "n": len(detection)},
        "decision_latency_s": {"p50": pct(decision, 50), "p99": pct(decision, 99), "n": len(decision)},
        "mttr_s": {"p50": pct(mttr, 50), "p99": pct(mttr, 99), "n": len(mttr)},
        "steps_applied": len(result.applied), "applied_twice": twice, "commands_received": result.commands,
        "approvals": len(result.approvals), "wall_s": round(result.wall_s, 1), "speed": args.speed,
        "problems": result.reasons[:10],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waves", type=int, default=17, help="waves of 3 faults (17 → 51 faults)")
    parser.add_argument("--speed", type=float, default=40.0, help="simulated seconds per wall second")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"faults injected         {report['faults']} ({report['resolved_faults']} resolved)")
        print(f"incidents               {report['incidents']} ({report['resolved_incidents']} resolved)")
        for name in ("detection_latency_s", "decision_latency_s", "mttr_s"):
            m = report[name]
            print(f"{name:<23} p50 {m['p50']} s · p99 {m['p99']} s  (n={m['n']})")
        print(f"steps applied           {report['steps_applied']} · applied twice: {report['applied_twice']}")
        print(f"approvals granted       {report['approvals']}")
        print(f"wall time               {report['wall_s']} s at speed {report['speed']}x")
        for problem in report["problems"]:
            print(f"  problem: {problem}")
