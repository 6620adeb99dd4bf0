"""What a diagnosis pays for its history: the background learned from the incidents before it.

    python benchmarks/history.py [CASES_DIR] [--topology T] [--variant noisy-raw-logs] [--last 20] [--json]

Builds a store as a team's would grow: every case of a `benchmarks/variants.py` variant (default
`noisy-raw-logs`, whose log lines are each distinct by their header, as real ones are) through `rtem
analyze --each --keep`, in time order. Then, in one process, for each of the last `--last` incidents, its
history three ways: read from every earlier event shape with nothing remembered (`learn_history` over
`IncidentStore.past_event_shapes`), with a fresh `LearningCache` (cold: each earlier incident read once),
and with that cache again (warm: what a running service pays per diagnosis). All three must agree;
the ratios are what the figures mean (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rca_accuracy import add_case_arguments, case_paths, load_cases  # noqa: E402
from variants import VARIANTS, rewrite_cases  # noqa: E402

from agent.analyze import analyze_files  # noqa: E402
from agent.config import Settings  # noqa: E402
from agent.learning import LearningCache  # noqa: E402
from agent.reasoner import learn_history  # noqa: E402
from agent.store import IncidentStore  # noqa: E402


def run(cases_dir: Path, topology_path: Path, variant: str, last: int) -> dict:
    cases = load_cases(cases_dir)
    with tempfile.TemporaryDirectory(prefix="rtem-history-") as scratch:
        work = Path(scratch)
        (work / "cases").mkdir()
        varied, topology = rewrite_cases(cases, json.loads(topology_path.read_text("utf-8")), VARIANTS[variant],
                                         work / "cases")
        files = [c.events for c in sorted(varied, key=lambda c: (c.start, c.number))]
        started = time.perf_counter()
        [*_, analysis] = asyncio.run(analyze_files(files, topology, Settings(data_dir=work / "data"),
                                                   workdir=work, each=True, keep=True))
        built = time.perf_counter() - started
        store = IncidentStore(analysis.db_path, readonly=True)
        try:
            conn = store.db.connection()
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            incidents = conn.execute("SELECT id, first_ts FROM incidents WHERE status != 'merged' "
                                     "ORDER BY first_ts, id").fetchall()
            shapes = len(store.past_event_shapes(float("inf"), limit=len(incidents))[1])
            diagnosed = incidents[-last:]
            cache = LearningCache()

            def each(history) -> tuple[float, list]:
                started = time.perf_counter()
                found = [history(incident, first_ts) for incident, first_ts in diagnosed]
                return (time.perf_counter() - started) / len(diagnosed), found

            plain_s, plain = each(lambda i, ts: learn_history(*store.past_event_shapes(ts, exclude=i), topology))
            cold_s, cold = each(lambda i, ts: cache.history(store, topology, ts, i))
            warm_s, warm = each(lambda i, ts: cache.history(store, topology, ts, i))
        finally:
            store.close()
    return {"variant": variant, "incidents": len(incidents), "events": events, "distinct_shapes": shapes,
            "diagnosed": len(diagnosed), "store_built_s": round(built, 1), "agree": plain == cold == warm,
            "per_diagnosis_ms": {"every_shape": round(plain_s * 1000, 1), "cache_cold": round(cold_s * 1000, 1),
                                 "cache_warm": round(warm_s * 1000, 1)},
            "warm_vs_every_shape": round(warm_s / plain_s, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_arguments(parser)
    parser.add_argument("--variant", default="noisy-raw-logs", choices=list(VARIANTS),
                        help="how the cases are written (default: noisy-raw-logs)")
    parser.add_argument("--last", type=int, default=20, help="how many of the last incidents to diagnose")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    directory, topology_path = case_paths(parser, args)
    report = run(directory, topology_path, args.variant, args.last)
    report["command"] = " ".join(["python benchmarks/history.py", *(argv if argv is not None else sys.argv[1:])])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ms = report["per_diagnosis_ms"]
        print(f"{report['variant']}: {report['incidents']} incidents, {report['events']} events, "
              f"{report['distinct_shapes']} distinct event shapes (store built in {report['store_built_s']} s)")
        print(f"history of each of the last {report['diagnosed']}: every shape read {ms['every_shape']} ms, "
              f"remembered by incident: cold {ms['cache_cold']} ms, warm {ms['cache_warm']} ms "
              f"(warm/every shape {report['warm_vs_every_shape']}); all agree: {report['agree']}")
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
