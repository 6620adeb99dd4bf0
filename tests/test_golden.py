"""Golden files: the parsed form of the shipped rules, and `rtem analyze --json` on the shipped example.

Each test compares its output with a file under tests/golden/. When a change is meant to alter that output
(a rule edited, a field added to the incident), rewrite the files in one command and review their diff:

    .venv/bin/pytest tests/test_golden.py --update-golden && git diff tests/golden/
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from rules import load_contracts, load_detections, load_guardrails
from tests.helpers import RECORDING, ROOT, analyze_json

RULES = ROOT / "rules"


def portable(data, *roots) -> object:
    """`data` as JSON would hold it, with paths under the repository (or a test's tmp_path) made relative."""
    text = json.dumps(data, sort_keys=True, default=str)
    for root, name in ((ROOT, ""), *((r, "<tmp>/") for r in roots)):
        text = text.replace(f"{root}/", name)
    return json.loads(text)


def test_the_detections_parse_as_pinned(golden):
    loaded = load_detections(RULES / "detect")
    golden.check("rules-detect.json", portable({"digest": loaded.digest, "sources": loaded.sources,
                                                "detections": [dataclasses.asdict(d) for d in loaded.detections]}))


def test_the_guardrails_parse_as_pinned(golden):
    golden.check("rules-guardrails.json", portable(load_guardrails(RULES / "guardrails").model_dump(mode="json")))


def test_the_contracts_parse_as_pinned(golden):
    contracts = load_contracts(RULES / "contracts")
    golden.check("rules-contracts.json",
                 portable({action: contract.model_dump(mode="json") for action, contract in contracts.items()}))


@pytest.mark.integration
def test_the_example_recording_analyzes_as_pinned(golden, tmp_path):
    """Incident ids derive from the events, times are event time: only the output directory varies by run.
    A change to the incident model shows here first: regenerate with the command in this module's docstring."""
    report = analyze_json(RECORDING, "--out", tmp_path / "out")
    golden.check("analyze-boutique-node-cpu.json", portable(report, tmp_path))
