"""The chaos suite, short: `rtem run` is SIGKILLed twice (once with a command in flight) while ten
incidents go through it against the benchmark's own nats-server. No event may be lost and no action
may run twice. benchmarks/chaos.py is the full run, with the other modes (docs/chaos.md)."""

import pytest

from tests.helpers import benchmark

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
async def test_killing_rtem_loses_no_event_and_runs_no_action_twice(tmp_path):
    chaos = benchmark("chaos")
    args = chaos.options(["--mode", "rtem", "--incidents", "10", "--kills", "2", "--in-flight", "0.5",
                          "--seed", "3", "--drain-timeout", "40"])
    report = await chaos.run(args, tmp_path)
    problem = f"chaos report: {report}"
    assert report["events"]["sent"] > 0 and report["events"]["lost"] == 0, problem
    assert report["actions"]["executed_twice"] == 0, problem
    assert report["kills"]["count"] == 2 and report["kills"]["in_flight"] == 1, problem
    assert report["kills"]["recovery_consuming_s"]["n"] == 2, problem  # it consumed again after each kill
    # The kill in flight left a step `started` in the ledger: the restarted service sent its key again,
    # and the target answered from memory instead of applying it twice.
    assert report["actions"]["resent"] >= 1, problem
    incidents = report["incidents"]
    assert incidents["completed"] == 10 and incidents["duplicated"] == 0 and incidents["undetected"] == 0, problem
