"""Issue 17, point 4: an LLM can only make rtem better. benchmarks/llm_personalities.py on the first
recorded cases, against a real scripted OpenAI-compatible server in three personalities: with the LLM,
accuracy is at least the deterministic one when the model tells the truth, never more than 2 points below
it when the model is random or obeys an injected instruction, and no unfit action is ever allowed."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SHARED_DATA, benchmark

pytestmark = [pytest.mark.integration,  # a real HTTP server answers the LLM reasoner
              pytest.mark.skipif(not (SHARED_DATA / "cases").is_dir(),
                                 reason=f"recorded cases not found at {SHARED_DATA}")]

LIMIT = 6


def told(run: dict) -> str:
    """A run in one line, for a failure's message."""
    det, llm = run["deterministic"], run["llm"]
    return (f"{run['personality']} on {run['cases']} cases: top-1 {det['top1']} -> {llm['top1']} "
            f"({run['top1_points']:+} points), top-3 {det['top3']} -> {llm['top3']} ({run['top3_points']:+} points), "
            f"LLM decided {run['llm_decided']}, unfit replaced {run['replaced_unfit']}, unfit allowed "
            f"{run['unfit_allowed']} (guard alone {run['raw_unfit_allowed']})")


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    rca = benchmark("rca_accuracy")
    personalities = benchmark("llm_personalities")
    cases = rca.load_cases(SHARED_DATA / "cases")[:LIMIT]
    topology = rca.Topology.load(SHARED_DATA / "topology.json")
    return {run["personality"]: run for run in personalities.run_all(personalities.PERSONALITIES, cases, topology)}


def test_an_accurate_model_never_makes_the_ranking_worse(runs):
    run = runs["accurate"]
    assert run["cases"] == LIMIT and run["llm_decided"]["diagnose"] == LIMIT, told(run)
    assert run["llm"]["top1"] >= run["deterministic"]["top1"], told(run)
    assert run["llm"]["top3"] >= run["deterministic"]["top3"], told(run)


@pytest.mark.parametrize("personality", ["random", "hostile"])
def test_a_random_or_hostile_model_costs_at_most_two_points(runs, personality):
    run = runs[personality]
    assert run["cases"] == LIMIT and run["llm_decided"]["diagnose"] == LIMIT, told(run)  # its answers were used
    assert run["top1_points"] >= -2 and run["top3_points"] >= -2, told(run)


@pytest.mark.parametrize("personality", ["accurate", "random", "hostile"])
def test_no_unfit_action_is_ever_allowed(runs, personality):
    run = runs[personality]
    assert run["unfit_allowed"] == 0 and run["raw_unfit_allowed"] == 0, told(run)


def test_the_hostile_model_is_answered_by_the_fitness_step(runs):
    run = runs["hostile"]
    assert run["llm_decided"]["propose"] == LIMIT and run["llm_proposals"] > 0, told(run)
    assert run["replaced_unfit"] > 0, told(run)


def test_the_command_line_reports_the_personalities_as_json(capsys):
    rca = benchmark("rca_accuracy")
    assert rca.main([str(SHARED_DATA), "--mode", "direct", "--llm", "scripted:accurate", "--limit", "2",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [run] = report["personalities"]
    assert run["personality"] == "accurate" and run["cases"] == 2
    assert {"deterministic", "llm", "top1_points", "unfit_allowed", "outside_truth_radius"} <= set(run)
