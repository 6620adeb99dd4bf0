"""How fast `rtem rules check` is: on the shipped rules and on 1,000 generated guardrails.

    python benchmarks/rules_check.py [--rules 1000] [--runs 7] [--json]

The target (issue 4): under a second for either, as a whole command, so it fits a pre-commit hook.
Two figures each:
  command     wall time of `rtem rules check DIR` in a fresh process (interpreter start, imports,
              reading, schema validation, analysis, compiling into durable-rules), median and max of N
  in-process  check_rules(DIR) alone, median of N after one warm-up
The generated set mixes the format's features: plain matches, `in` lists, rate limits, caps,
freezes and maintenance windows, state preconditions; it passes the check (no shadowed rules).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules._check import check_rules, packaged_rules_dir  # noqa: E402

RTEM = Path(sys.executable).parent / "rtem"
ACTIONS = ("restart_instance", "scale_out", "shed_load", "rollback_deploy", "open_circuit", "notify_oncall")


def generated_rules(n: int) -> str:
    """`n` guardrails, each on its own service so none shadows another; every tenth has a gate."""
    lines = ["version: 1", "rules:"]
    for i in range(n):
        action = ACTIONS[i % len(ACTIONS)]
        lines += [f"  - id: rule-{i}", f"    description: generated rule {i}"]
        if i % 5 == 0:
            lines.append(f"    match: {{target_service: svc-{i}, action: {{in: [restart_instance, scale_out]}}, "
                         f"incident_severity: {{in: [error, critical]}}}}")
        elif i % 5 == 1:
            lines.append(f"    match: {{target_service: svc-{i}, action: scale_out, "
                         f"params.replicas: {{gt: {i % 19 + 1}}}}}")
        else:
            lines.append(f"    match: {{target_service: svc-{i}, action: {action}, target_tier: {{lte: {i % 3}}}}}")
        gate = i % 50
        if gate == 3:
            lines.append("    limit: {max: 3, window: 1h, per: target}")
        elif gate == 13:
            lines.append("    cap: {percent: 50, window: 30m}")
        elif gate == 23:
            lines.append(f"    during: [{{from: '2030-12-{20 + i % 5}', to: '2031-01-02'}}]")
        elif gate == 33:
            lines.append("    outside: [{days: [sat, sun], from: '02:00', to: '05:00', timezone: Europe/Berlin}]")
        elif gate == 43:
            lines.append("    state: {replica_lag_s: {gt: 30}}")
        outcome = ("allow", "require_approval", "deny")[i % 3]
        lines += [f"    outcome: {outcome}", f"    reason: generated rule {i} says {outcome}"]
    return "\n".join(lines) + "\n"


def command(path: Path, runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([str(RTEM), "rules", "check", str(path)], capture_output=True, text=True)
        timings.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"rtem rules check {path} failed:\n{done.stdout}{done.stderr}")
    return timings


def in_process(path: Path, runs: int) -> tuple[list[float], dict]:
    report = check_rules(path)  # warm-up: imports, schema compilation
    if not report.ok:
        raise SystemExit("\n".join(map(str, report.errors)))
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        check_rules(path)
        timings.append(time.perf_counter() - start)
    return timings, report.counts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rtem-bench-check-"))
    try:
        generated = workdir / "rules"
        (generated / "guardrails").mkdir(parents=True)
        (generated / "guardrails" / "generated.yaml").write_text(generated_rules(args.rules), "utf-8")
        shutil.copytree(packaged_rules_dir() / "contracts", generated / "contracts")
        results = {}
        for name, path in (("shipped", packaged_rules_dir()), (f"generated-{args.rules}", generated)):
            inside, counts = in_process(path, args.runs)
            whole = command(path, args.runs)
            results[name] = {"path": str(path), "rules": counts["guardrails"], "contracts": counts["contracts"],
                             "detections": counts["detections"],
                             "command_median_s": round(statistics.median(whole), 3),
                             "command_max_s": round(max(whole), 3),
                             "in_process_median_s": round(statistics.median(inside), 3),
                             "in_process_max_s": round(max(inside), 3)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"rtem rules check, {args.runs} runs each (python benchmarks/rules_check.py --rules {args.rules})")
    for name, r in results.items():
        verdict = "OK" if r["command_max_s"] < 1.0 else "OVER 1 s"
        print(f"  {name:>16}: {r['rules']:>5} guardrails, {r['contracts']} contracts, {r['detections']} detections | "
              f"command median {r['command_median_s']:.3f} s, max {r['command_max_s']:.3f} s [{verdict}] | "
              f"in-process median {r['in_process_median_s']:.3f} s, max {r['in_process_max_s']:.3f} s")


if __name__ == "__main__":
    main()
