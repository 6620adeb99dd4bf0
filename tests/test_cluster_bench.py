"""benchmarks/cluster.py --quick runs end to end: its JSON has every figure, and nothing was lost, duplicated
or executed twice across its kills. How fast it went is the benchmark's business, not this test's."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_the_cluster_benchmark_quick_run_reports_every_figure_and_loses_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cluster.py"), "--quick", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=220, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout)
    problem = f"{json.dumps(report, indent=1)[:6000]}\n{done.stderr[-2000:]}"

    throughput = report["throughput"]
    assert [r["workers"] for r in throughput["runs"]] == [1, 2], problem
    for run in throughput["runs"]:
        assert {"seconds", "per_minute", "ratio", "completed", "driven_by", "all_final"} <= run.keys(), problem
        assert run["all_final"] and run["completed"] == throughput["incidents"] == 4, problem
    assert throughput["runs"][0]["ratio"] == 1.0
    for part, kills in (("failover", 2), ("takeover", 1)):
        figures = report[part]
        assert {"p50_s", "max_s", "each_s", "target_s", "met"} <= figures.keys(), problem
        assert figures["kills"] == kills and figures["measured"] == kills, problem

    integrity = report["integrity"]
    assert integrity["events_sent"] > 0 and integrity["events_recorded"] == integrity["events_sent"], problem
    for figure in ("events_lost", "events_recorded_twice", "incidents_duplicated", "faults_undetected",
                   "actions_executed_twice"):
        assert integrity[figure] == 0, f"{figure}: {problem}"
    assert integrity["unfinished"] == [], problem
    assert done.returncode == 0, problem
