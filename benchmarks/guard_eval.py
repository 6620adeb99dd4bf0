"""How fast the guard judges one proposal against 1,000 guardrails (target: p99 under 5 ms).

    python benchmarks/guard_eval.py [--rules 1000] [--evaluations 5000] [--json]

Three workloads over the same 1,000 generated guardrails (benchmarks/rules_check.py makes them: plain
matches, limits, caps, windows, state preconditions) plus the built-in contract and blast-radius checks:
  repeated     one proposal judged again and again (the engine's answer cache hits)
  cold         varied proposals with the answer cache cleared before each evaluation, so durable-rules
               matches every fact against every compiled ruleset (the worst case)
  gated        proposals that match rules with limits, caps, windows and state preconditions, with an
               action history of 10,000 actions in memory: the gates read the history and the state
  gated-sqlite the same with the history in SQLite (agent/action_history.py), as `rtem run` has it
Each figure is one `Guard.evaluate` call, timed with perf_counter: p50, p99, max, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rules import Guard, Proposal, Topology, load_contracts, load_guardrails  # noqa: E402
from rules._gates import MemoryHistory, RecordedAction, StaticState  # noqa: E402
from rules_check import ACTIONS, generated_rules  # noqa: E402

T0 = datetime(2024, 3, 20, 12, tzinfo=timezone.utc)


def topology(n: int) -> Topology:
    entities, relations = [], []
    for i in range(n):
        entities.append({"id": f"svc-{i}", "type": "service", "tier": i % 3})
        for k in range(4):
            entities.append({"id": f"svc-{i}-{k}", "type": "instance"})
            relations.append({"source": f"svc-{i}-{k}", "target": f"svc-{i}", "type": "instance_of"})
    entities.append({"id": "orders-db", "type": "database"})
    return Topology.from_dict({"entities": entities, "relations": relations})


def proposals(n: int, kind: str, rng: random.Random):
    for step in range(n):
        i = 0 if kind == "repeated" else rng.randrange(1000)
        if kind == "gated":
            i = rng.choice([3, 13, 23, 33, 43, 53, 63, 113, 213, 313]) + 50 * rng.randrange(10)
            i = i if i < 1000 else i % 50 + 3
        action = ACTIONS[i % len(ACTIONS)]
        if i % 5 in (0, 1):
            action = "scale_out" if i % 5 == 1 or kind != "gated" else "restart_instance"
        target = f"svc-{i}-{step % 4}" if action == "restart_instance" else f"svc-{i}"
        params = {"scale_out": {"replicas": 1 + i % 20}, "shed_load": {"percent": 10},
                  "open_circuit": {"from": "web"}, "notify_oncall": {"summary": "s"}}.get(action, {})
        at = T0 if kind == "repeated" else T0 + timedelta(minutes=step)
        yield Proposal(type=action, target=target, params=params), at


def run(guard: Guard, topo: Topology, kind: str, n: int, history, state) -> dict:
    rng = random.Random(7)
    timings, matched = [], 0
    first = next(proposals(1, kind, random.Random(1)))
    guard.evaluate(first[0], topology=topo, incident_entities=[first[0].target], incident_id="inc-0",
                   incident_severity="error", at=first[1])  # warm-up: durable-rules registers its rulesets
    for proposal, at in proposals(n, kind, rng):
        if kind == "cold":
            guard._compiled._answers.clear()
        start = time.perf_counter()
        verdict = guard.evaluate(proposal, topology=topo, incident_entities=[proposal.target], incident_id="inc-1",
                                 incident_severity="error", at=at, history=history, state=state)
        timings.append(time.perf_counter() - start)
        matched += len(verdict.rules)
    timings.sort()
    return {"evaluations": n, "p50_ms": round(statistics.median(timings) * 1000, 3),
            "p99_ms": round(timings[int(len(timings) * 0.99) - 1] * 1000, 3), "max_ms": round(timings[-1] * 1000, 3),
            "rules_matched_per_evaluation": round(matched / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--evaluations", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtem-bench-guard-") as workdir:
        path = Path(workdir) / "generated.yaml"
        path.write_text(generated_rules(args.rules), "utf-8")
        started = time.perf_counter()
        guard = Guard(load_guardrails(path), load_contracts())
        compile_s = time.perf_counter() - started
    topo = topology(args.rules)
    rng = random.Random(3)
    history = MemoryHistory([
        RecordedAction(T0 + timedelta(seconds=rng.uniform(-7200, 3600 * 80)),
                       rng.choice(["restart_instance", "scale_out"]),
                       f"svc-{rng.randrange(args.rules)}-{rng.randrange(4)}") for _ in range(10_000)])
    state = StaticState({f"svc-{i}": {"replica_lag_s": i % 60} for i in range(args.rules)})
    results = {"rules": len(guard.guardrails.rules), "compile_s": round(compile_s, 3)}
    for kind in ("repeated", "cold", "gated"):
        results[kind] = run(guard, topo, kind, args.evaluations, history, state)
    from agent.action_history import DbActionHistory

    with tempfile.TemporaryDirectory(prefix="rtem-bench-history-") as workdir:
        stored = DbActionHistory(Path(workdir) / "rtem.db")
        for action in history._actions:
            stored.record(action.action, action.target, action.at)
        results["gated-sqlite"] = run(guard, topo, "gated", args.evaluations, stored, state)
        stored.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"Guard.evaluate against {results['rules']} guardrails (compiled in {compile_s:.2f} s), "
          f"{args.evaluations} evaluations each (python benchmarks/guard_eval.py --rules {args.rules})")
    for kind in ("repeated", "cold", "gated", "gated-sqlite"):
        r = results[kind]
        verdict = "OK" if r["p99_ms"] < 5 else "OVER 5 ms"
        print(f"  {kind:>12}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms [{verdict}], "
              f"max {r['max_ms']:.3f} ms, {r['rules_matched_per_evaluation']} rules matched per evaluation")


if __name__ == "__main__":
    main()
