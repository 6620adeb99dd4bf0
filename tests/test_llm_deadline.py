"""A deadline, not a queue (issue 17, item 3): each incident's LLM refinement has a wall-time deadline that
spans its diagnosis and its proposals; LLM work runs on a few workers, earliest deadline first, and a job whose
deadline passed in the queue is never sent; past the deadline the deterministic answer stands, and a late
diagnosis is only recorded for people to read. Against the real scripted OpenAI-compatible server
(tests/llm_server.py), a real SQLite audit log, and `rtem analyze` through the graph."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.cli import app
from agent.llm import LLMClient, LLMConfig, LLMReasoner
from agent.models import IncidentView
from agent.reasoner import DeterministicReasoner
from bus import CLOSED, CircuitBreaker, Event
from rules import load_contracts
from tests.helpers import RECORDING, TOPOLOGY, assert_guard_held, decisions
from tests.llm_server import Delay, ScriptedLLM, candidates_in, good_diagnosis, good_proposals

pytestmark = pytest.mark.integration

START = datetime(2026, 12, 3, 10, tzinfo=timezone.utc)
MARGIN_S = 3.0  # generous: the machine runs other tests beside these


def _event(incident_id: str, i: int, subject: str, metric: str) -> Event:
    return Event(id=f"{incident_id}-ev{i}", source="/t", type="rtem.metric.anomaly",
                 time=START + timedelta(seconds=i), subject=subject, severity="warning",
                 message=f"{metric} anomalous (up)", attributes={"metric": metric, "direction": "up"})


def _view(incident_id: str, topology) -> IncidentView:
    """node-6's CPU and cartservice-0's memory: two candidates, node-6 first."""
    events = [_event(incident_id, i, "cartservice-0", "container_memory_usage_bytes") for i in range(4)]
    events += [_event(incident_id, 10 + i, "node-6", "system.cpu.pct_usage") for i in range(3)]
    return IncidentView(incident_id, events, topology)


@pytest.fixture
def server():
    s = ScriptedLLM().start()
    yield s
    s.stop()


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "rtem.db")
    yield log
    log.close()


def _reasoner(server, deadline_s: float, *, audit=None, workers: int = 4, breaker=None) -> LLMReasoner:
    config = LLMConfig(provider="openai", base_url=server.url, api_key="k", model="m", timeout_s=30,
                       max_concurrency=workers)
    return LLMReasoner(LLMClient(config, breaker or CircuitBreaker("test", 3, 30.0)), contracts=load_contracts(),
                       audit=audit, deadline_s=deadline_s)


def _fallbacks(task: str, reason: str) -> float:
    return REGISTRY.get_sample_value("rtem_llm_fallbacks_total", {"task": task, "reason": reason}) or 0.0


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_slow_model_leaves_the_deterministic_answer_at_the_deadline(server, boutique):
    server.on("diagnosis", Delay(10.0, good_diagnosis))
    breaker = CircuitBreaker("test", 1, 30.0)  # one counted failure would open it
    reasoner = _reasoner(server, 1.0, breaker=breaker, workers=1)
    view = _view("inc-slow", boutique)
    before = _fallbacks("diagnose", "deadline")
    try:
        started = time.monotonic()
        (causes, run), took = _timed(lambda: reasoner.diagnose(view))
        assert 0.9 <= took < 1.0 + MARGIN_S, took
        assert run.reasoner == "deterministic" and run.fallback.startswith("deadline: no LLM answer within 1 s"), run
        assert run.fallback.endswith("the deterministic answer stands (the model was still answering)")
        assert 0.9 <= run.llm_seconds < 1.0 + MARGIN_S
        assert causes == DeterministicReasoner().rank(view.events, boutique, 5)
        assert _fallbacks("diagnose", "deadline") == before + 1

        # the proposals get what the diagnosis left: nothing, so the model is not asked
        (proposals, prun), took = _timed(lambda: reasoner.propose(view, causes, run))
        assert took < 0.5, took
        assert prun.fallback == ("deadline: the diagnosis used all of the 1 s deadline; the deterministic answer "
                                 "stands (the model was not asked)")
        assert proposals and all(p.proposed_by == "deterministic" for p in proposals)
        assert server.tasks() == ["diagnosis"]

        # the abandoned request holds the one worker only until the deadline's grace ends (1.5 s), and a cut
        # says nothing about the provider's health: the breaker stays closed and the next incident is answered
        server.on("diagnosis", good_diagnosis)
        causes, run = reasoner.diagnose(_view("inc-next", boutique))
        assert run.reasoner == "llm", run.fallback
        # measured from the first call's start, so a slow machine between the calls cannot hide the wait
        assert time.monotonic() - started >= 1.5, "it waited for the worker the abandoned request held"
        assert breaker.state == CLOSED
    finally:
        reasoner.close()


def test_a_backlog_never_starves_later_incidents_and_expired_jobs_are_never_sent(server, boutique):
    """Four incidents at once, one worker, a model slower than the deadline: every incident is answered
    within its deadline; the first job holds the worker until its cutoff, the three queued behind it
    expire there and are dropped unsent."""
    server.default["diagnosis"] = Delay(10.0, good_diagnosis)
    reasoner = _reasoner(server, 1.0, workers=1)
    results: dict[str, tuple] = {}

    def handle(incident_id: str) -> None:
        view = _view(incident_id, boutique)
        started = time.monotonic()
        causes, run = reasoner.diagnose(view)
        proposals, prun = reasoner.propose(view, causes, run)
        results[incident_id] = (time.monotonic() - started, run, prun, proposals)

    try:
        _at_once(handle, 4)
        assert sorted(results) == [f"inc-{i}" for i in range(4)]
        for incident_id, (took, run, prun, proposals) in results.items():
            assert took < 1.0 + MARGIN_S, (incident_id, took)
            assert run.fallback.startswith("deadline:") and prun.fallback.startswith("deadline:"), incident_id
            assert proposals, "the deterministic proposals stand"
        whys = sorted(run.fallback.rsplit("(", 1)[1] for _, run, _, _ in results.values())
        assert whys == ["it was still waiting behind other incidents' LLM work)"] * 3 + ["the model was still answering)"]
        _wait_for(lambda: reasoner.lane.dropped == 3)  # at the first job's cutoff, the worker drops the rest
        assert len(server.requests) == 1, server.tasks()
    finally:
        reasoner.close()


def test_one_worker_serves_incidents_one_request_at_a_time(server, boutique):
    """A model fast enough for everyone: all incidents get the LLM's answers, one request at a time."""
    inflight, peak, lock = [0], [0], threading.Lock()

    def slow(answer):
        def reply(body):
            with lock:
                inflight[0] += 1
                peak[0] = max(peak[0], inflight[0])
            time.sleep(0.15)
            with lock:
                inflight[0] -= 1
            return answer(body)
        return reply

    server.default.update(diagnosis=slow(good_diagnosis), proposals=slow(good_proposals))
    reasoner = _reasoner(server, 8.0, workers=1)
    runs: dict[str, tuple] = {}

    def handle(incident_id: str) -> None:
        view = _view(incident_id, boutique)
        causes, run = reasoner.diagnose(view)
        runs[incident_id] = (run, reasoner.propose(view, causes, run)[1])

    try:
        _at_once(handle, 3)
        assert all(run.reasoner == "llm" and prun.reasoner == "llm" for run, prun in runs.values()), runs
        assert len(server.requests) == 6 and peak[0] == 1
        assert all(prun.llm_seconds >= run.llm_seconds > 0 for run, prun in runs.values())
    finally:
        reasoner.close()


def test_a_late_diagnosis_is_recorded_for_people_and_adds_no_proposal(server, boutique, audit):
    server.on("diagnosis", Delay(2.3, good_diagnosis))  # after the 2 s deadline, well within its 1 s grace
    reasoner = _reasoner(server, 2.0, audit=audit)
    view = _view("inc-late", boutique)
    try:
        causes, run = reasoner.diagnose(view)
        assert run.fallback.startswith("deadline:")
        assert causes == DeterministicReasoner().rank(view.events, boutique, 5), "the late answer changed nothing"
        proposals, prun = reasoner.propose(view, causes, run)
        assert prun.fallback.startswith("deadline:")
        assert all(p.proposed_by == "deterministic" for p in proposals)
        late = _wait_for(lambda: audit.records(incident_id="inc-late", kind="reasoner.late"))
        [record] = late
        assert record.node == "diagnose"
        chosen = candidates_in(server.requests[0])[1]
        assert record.decision["hypotheses"][0] == {
            "entity": chosen, "fault_type": "cpu", "confidence": 0.9,
            "explanation": f"{chosen} saturated first; the others follow it."}
        assert all(set(h) == {"entity", "fault_type", "confidence", "explanation"}
                   for h in record.decision["hypotheses"])
        assert "after the incident's 2 s deadline" in record.reasons[0] and "changed nothing" in record.reasons[0]
        assert "no action follows" in record.reasons[1]
        assert record.versions["model"] == "m"
        assert server.tasks() == ["diagnosis"], "no proposals were asked for"
        assert [r.kind for r in audit.records(incident_id="inc-late")] == ["reasoner.late"]
    finally:
        reasoner.close()


def test_late_proposals_are_dropped(server, boutique, audit):
    # The answer comes 0.3 s after the 2 s deadline, 0.7 s before the cutoff (the deadline plus half of it)
    # cuts the call: late, not cut, even when the machine is slow to start the call.
    server.on("proposals", Delay(2.3, good_proposals))
    reasoner = _reasoner(server, 2.0, audit=audit)
    view = _view("inc-late-plan", boutique)
    late = lambda: REGISTRY.get_sample_value("rtem_llm_late_answers_total", {"task": "propose"}) or 0.0  # noqa: E731
    before = late()
    try:
        causes = DeterministicReasoner().rank(view.events, boutique, 5)
        (proposals, run), took = _timed(lambda: reasoner.propose(view, causes))
        assert took < 2.0 + MARGIN_S and run.fallback.startswith("deadline: no LLM answer within 2 s")
        assert all(p.proposed_by == "deterministic" for p in proposals)
        _wait_for(lambda: late() > before)
        assert audit.records(incident_id="inc-late-plan") == [], "a late plan is logged, never recorded or run"
    finally:
        reasoner.close()


def test_the_proposals_get_only_what_the_diagnosis_left(server, boutique):
    server.on("diagnosis", Delay(2.0, good_diagnosis))
    server.on("proposals", Delay(1.8, good_proposals), Delay(1.8, good_proposals))
    reasoner = _reasoner(server, 3.0)
    view = _view("inc-rest", boutique)
    try:
        causes, run = reasoner.diagnose(view)
        assert run.reasoner == "llm", run.fallback
        assert 2.0 <= run.llm_seconds < 3.0
        (proposals, prun), took = _timed(lambda: reasoner.propose(view, causes, run))
        left = 3.0 - run.llm_seconds
        assert prun.fallback.startswith(f"deadline: no LLM answer within the {left:.1f} s the diagnosis left "
                                        "of the 3 s deadline"), prun.fallback
        assert took < left + MARGIN_S and prun.llm_seconds >= 2.95
        assert all(p.proposed_by == "deterministic" for p in proposals)
        # with the whole deadline, the same slow answer would have been in time
        proposals, prun = reasoner.propose(view, causes)
        assert prun.reasoner == "llm" and all(p.proposed_by == "llm:m" for p in proposals), prun.fallback
    finally:
        reasoner.close()


def test_the_decision_record_says_the_deadline_passed(server, tmp_path, monkeypatch):
    """Through `rtem analyze` and the graph, with RTEM_LLM_DEADLINE_S."""
    for name, value in {"RTEM_LLM_BASE_URL": server.url, "RTEM_LLM_API_KEY": "sk-test", "RTEM_LLM_MODEL": "m",
                        "RTEM_LLM_DEADLINE_S": "1", "RTEM_LLM_TIMEOUT_S": "30"}.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "RTEM_LLM", "RTEM_LLM_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    server.default["diagnosis"] = Delay(10.0, good_diagnosis)
    out = tmp_path / "out"
    result, took = _timed(lambda: CliRunner().invoke(app, [
        "analyze", str(RECORDING), "--topology", str(TOPOLOGY), "--json", "--out", str(out), "--llm", "openai"]))
    assert result.exit_code == 0, result.output
    db = Path(out) / "run" / "rtem.db"
    [ranked] = decisions(db, "causes.ranked")
    assert ranked["reasons"][0].startswith("deterministic fallback: deadline: no LLM answer within 1 s")
    assert ranked["decision"]["reasoner"]["llm_seconds"] >= 0.9
    [proposed] = decisions(db, "actions.proposed")
    assert proposed["decision"]["reasoner"]["fallback"].startswith("deadline:")
    assert server.tasks() == ["diagnosis"]
    assert json.loads(result.stdout)["incidents"], "the incident was handled"
    assert_guard_held(db)


def test_the_lane_takes_jobs_in_order_and_never_runs_one_past_its_deadline():
    """The lane alone (no model): one worker, jobs run earliest deadline first (in arrival order on a tie);
    a job that was still queued at its deadline never runs; idle workers end."""
    from agent.llm import Deadline, DeadlinePassed, Lane

    lane = Lane(1, name="lane-under-test", idle_s=0.2)
    ran: list[str] = []
    job = _recording(ran)

    blocker = lane.submit(job("blocker", 0.5), Deadline.after(5.0))
    first, second = (lane.submit(job(n), Deadline.after(5.0)) for n in ("first", "second"))
    with pytest.raises(DeadlinePassed, match="still waiting behind other incidents"):
        lane.run(job("expired"), Deadline.after(0.1))
    assert [f.result(timeout=5) for f in (blocker, first, second)] == ["blocker", "first", "second"]
    assert ran == ["blocker", "first", "second"] and lane.dropped == 1
    _wait_for(lambda: not any(t.name.startswith("lane-under-test") for t in threading.enumerate()))
    assert lane.run(job("again"), Deadline.after(2.0)) == "again", "a new worker starts for new work"
    lane.close()


def test_the_lane_serves_the_incident_that_began_first_before_later_ones():
    """An earlier incident's proposals (its deadline is near) run before the diagnoses of incidents that
    opened after it (their deadlines are later), even though they were queued after them."""
    from agent.llm import Deadline, Lane

    lane = Lane(1, name="lane-edf", idle_s=0.2)
    ran: list[str] = []
    job = _recording(ran)

    started = time.monotonic()
    busy = lane.submit(job("incident-0 proposals", 0.3), Deadline.after(4.0, now=started))
    later = [lane.submit(job(f"incident-{n} diagnosis"), Deadline.after(5.0, now=started + n * 0.01)) for n in (2, 3)]
    proposals = lane.submit(job("incident-1 proposals"), Deadline.after(4.9, now=started + 0.02))
    for future in (busy, *later, proposals):
        future.result(timeout=5)
    assert ran == ["incident-0 proposals", "incident-1 proposals", "incident-2 diagnosis", "incident-3 diagnosis"]
    lane.close()


def _at_once(handle, incidents: int) -> None:
    """`handle` for inc-0 … inc-N at once, each on its own thread, as the driver runs incidents."""
    threads = [threading.Thread(target=handle, args=(f"inc-{i}",)) for i in range(incidents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def _recording(ran: list[str]):
    """Jobs for a lane that sleep, then note their name in `ran` (the order they ran in) and return it."""
    def job(name: str, seconds: float = 0.0):
        def run():
            time.sleep(seconds)
            ran.append(name)
            return name
        return run
    return job


def _wait_for(probe, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not seen within {timeout_s} s")
