"""benchmarks/variants.py rewrites the recorded cases into the shapes of other systems. `raw-logs` tells
the same evidence as `logs` in the format programs write (a header with timestamp, level, address and
the writer's own name on every line), `json-logs` and `logfmt-logs` in structured logging's: the log kinds the
reasoner reads must group the lines the same way."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from agent.reasoner._signals import LOG, extract_signals
from bus._envelope import parse_event
from rules.topology import Topology
from tests.helpers import SHARED_DATA, benchmark

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "cases").is_dir(),
                                reason=f"recorded cases not found at {SHARED_DATA}")

CASES = (0, 8, 27, 46, 60)


def log_groups(rewrite, number: int) -> set[frozenset[str]]:
    """Which events share a log kind, by event id."""
    docs = [json.loads(line) for line in (SHARED_DATA / "cases" / f"{number}.events.jsonl").read_text().splitlines()]
    topology_doc = json.loads((SHARED_DATA / "topology.json").read_text())
    docs, topology_doc, _ = rewrite(docs, topology_doc, {"root_cause_entity": "?"})
    topology = Topology.from_dict(topology_doc)
    groups: dict[str, set[str]] = defaultdict(set)
    for signal in extract_signals([parse_event(json.dumps(d)) for d in docs], topology):
        if signal.source == LOG:
            groups[signal.kind].add(signal.event_id)
    return {frozenset(ids) for ids in groups.values()}


@pytest.mark.parametrize("number", CASES)
def test_lines_with_headers_group_as_the_bare_lines_do(number):
    variants = benchmark("variants")
    bare = log_groups(variants.logs, number)
    assert len(bare) > 3
    assert log_groups(variants.raw_logs, number) == bare
    assert log_groups(variants.one_instance_raw_logs, number) == log_groups(variants.one_instance_logs, number)


@pytest.mark.parametrize("number", CASES)
def test_structured_lines_group_as_the_bare_lines_do(number):
    """JSON and logfmt lines: the statement is a field among a dozen; read as prose, every line is one kind."""
    variants = benchmark("variants")
    bare = log_groups(variants.logs, number)
    assert log_groups(variants.json_logs, number) == bare
    assert log_groups(variants.logfmt_logs, number) == bare
