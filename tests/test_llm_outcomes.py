"""Outcomes for the LLM (issue 14, item 5): the similar past incidents the model is shown say what rtem
ranked, what a person confirmed, and what happened (resolved, escalated, rejected, which action preceded
recovery), each as it stood when the current incident opened. Real SQLite store and audit log, the real
`confirm`; the records the graph writes are appended as the graph's nodes write them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import prompts
from agent.audit import AuditLog
from agent.confirm import confirm
from agent.llm import IncidentContext, LLMClient, LLMConfig, LLMReasoner
from agent.llm._context import LEVELS, fit
from agent.llm._past import Cutoff, past_incident
from agent.models import IncidentView, RootCause
from agent.store import IncidentStore, event_row
from bus import CircuitBreaker, Event
from rules import load_contracts
from tests.llm_server import ScriptedLLM, good_diagnosis

START = datetime(2022, 3, 20, 10, tzinfo=timezone.utc)


def _event(incident_id: str, i: int, subject: str, at: datetime) -> Event:
    return Event(id=f"ev-{incident_id}-{i}", source="/t", type="rtem.metric.anomaly", time=at + timedelta(seconds=i),
                 subject=subject, severity="warning", message="container_memory_usage_bytes anomalous (up)",
                 attributes={"metric": "container_memory_usage_bytes", "direction": "up"})


class Scene:
    """One store and audit log with earlier incidents and a current one, built in the order of the chain."""

    def __init__(self, tmp_path, topology):
        self.store = IncidentStore(tmp_path / "rtem.db")
        self.audit = AuditLog(tmp_path / "rtem.db")
        self.topology = topology

    def open(self, incident_id: str, entities: list[str], hours_before: float) -> list[Event]:
        at = START - timedelta(hours=hours_before)
        events = [_event(incident_id, i, entities[0], at) for i in range(4)]
        with self.store.transaction():
            self.store.insert_events([event_row(e, incident_id, [], "now") for e in events])
            self.store.upsert_incident({"id": incident_id, "first_ts": events[0].ts, "last_ts": events[-1].ts,
                                        "severity": "error", "entities": entities, "detections": ["d"],
                                        "signals": 1})
        self.audit.append("incident.opened", incident_id=incident_id, node="correlate",
                          decision={"entities": entities, "severity": "error"})
        return events

    def rank(self, incident_id: str, *entities: str) -> None:
        causes = [{"entity": e, "fault_type": "memory", "confidence": 0.5} for e in entities]
        self.audit.append("causes.ranked", incident_id=incident_id, node="diagnose",
                          decision={"root_causes": causes, "reasoner": {"reasoner": "deterministic"}})
        self.store.save_diagnosis(incident_id, status="diagnosing", root_causes=causes, actions=[], versions={})

    def act(self, incident_id: str, label: str, ok: bool = True) -> None:
        self.audit.append("action.executed", incident_id=incident_id, node="execute",
                          inputs={"action": label}, decision={"ok": ok, "result": {}, "breaker_open": False})

    def decide(self, incident_id: str, label: str, status: str) -> None:
        self.audit.append("action.approval", incident_id=incident_id, node="approve", inputs={"action": label},
                          decision={"status": status, "by": "bob"}, reasons=["not during the sale"])

    def close(self, incident_id: str, status: str, reason: str) -> None:
        self.audit.append("incident.closed" if status in ("resolved", "escalated") else "incident.diagnosed",
                          incident_id=incident_id, node="close", decision={"status": status}, reasons=[reason])

    def confirm(self, incident_id: str, cause: str, note: str = "") -> None:
        confirm(self.store, self.audit, incident_id, cause, by="alice", via="cli", fault_type="memory", note=note,
                topology=self.topology)

    def shutdown(self) -> None:
        self.audit.close()
        self.store.close()


@pytest.fixture
def scene(tmp_path, boutique):
    """inc-old: rtem ranked redis-cart, a person rejected its failover, restarting cartservice-0 preceded
    recovery, and alice confirmed cartservice-0. Then inc-new opens on another cartservice instance."""
    s = Scene(tmp_path, boutique)
    s.open("inc-old", ["cartservice-0", "redis-cart"], hours_before=5)
    s.rank("inc-old", "redis-cart", "cartservice-0")
    s.decide("inc-old", "#1 failover_cache on redis-cart", "rejected")
    s.act("inc-old", "#2 notify_oncall on redis-cart")
    s.act("inc-old", "#0 restart_service on cartservice-0")
    s.act("inc-old", "#3 notify_oncall on cartservice-0")  # telling people after the fix fixes nothing
    s.close("inc-old", "resolved", "recovered: no new signal for 300 s")
    s.confirm("inc-old", "cartservice-0", note="heap leak after v2.3, password=hunter2")
    s.current = s.open("inc-new", ["cartservice-1"], hours_before=0)
    yield s
    s.shutdown()


def _context(scene, boutique) -> IncidentContext:
    candidates = [RootCause(entity="cartservice-1", confidence=1.0, evidence=[scene.current[0].id])]
    return IncidentContext.gather(scene.current, boutique, candidates, scene.store, scene.audit)


def _prompt(context: IncidentContext, level: int = 0) -> str:
    return prompts.load("diagnose").render(**context.diagnose_vars(LEVELS[level]))[1]["content"]


def test_a_later_incident_is_shown_the_earlier_ones_confirmed_cause_and_outcome(scene, boutique):
    context = _context(scene, boutique)
    [old] = context.past
    assert (old.id, old.ranked, old.status) == ("inc-old", "redis-cart", "resolved")
    assert old.confirmed.entity == "cartservice-0" and not old.confirmed.agreed and old.confirmed.rank == 2
    assert old.fixed_by == "restart_service on cartservice-0", "the page before it is not what fixed it"
    assert old.rejected == ["failover_cache on redis-cart by bob"]
    text = _prompt(context)
    past = text[text.index("SIMILAR PAST INCIDENTS"):]
    assert "rtem ranked redis-cart (memory) first" in past
    assert "confirmed cause: cartservice-0 (memory); rtem ranked it #2" in past
    assert "outcome: resolved, after restart_service on cartservice-0" in past
    assert "rejected: failover_cache on redis-cart by bob" in past
    assert "heap leak" in past and "hunter2" not in text, "the note is quoted, and scrubbed"
    assert text.index("<untrusted-event-data>") < text.index("SIMILAR PAST INCIDENTS") < \
        text.index("</untrusted-event-data>"), "records' text is quoted like event text"


def test_what_was_recorded_after_the_incident_opened_is_not_shown(tmp_path, boutique):
    """The leak test: inc-mid was confirmed and resolved only after inc-new opened, and inc-late opened
    after it (with an earlier event time): neither may inform inc-new's context."""
    s = Scene(tmp_path, boutique)
    try:
        s.open("inc-mid", ["cartservice-2"], hours_before=3)
        s.rank("inc-mid", "cartservice-2")
        current = s.open("inc-new", ["cartservice-1"], hours_before=0)
        s.act("inc-mid", "#0 restart_service on cartservice-2")
        s.close("inc-mid", "resolved", "recovered")
        s.confirm("inc-mid", "cartservice-2")
        s.open("inc-late", ["cartservice-0"], hours_before=6)
        s.rank("inc-late", "cartservice-0")
        s.confirm("inc-late", "cartservice-0")
        candidates = [RootCause(entity="cartservice-1", confidence=1.0, evidence=[current[0].id])]
        context = IncidentContext.gather(current, boutique, candidates, s.store, s.audit)
        [mid] = context.past
        assert mid.id == "inc-mid" and mid.confirmed is None and mid.status == "open" and mid.executed == []
        text = _prompt(context)
        assert "confirmed cause: none yet" in text and "outcome: open" in text and "inc-late" not in text
        # the same records, read now, do tell: the cut is what hides them
        later = s.audit.records(incident_id="inc-new", kind="incident.opened")[0]
        everything = s.audit.records(incident_id="inc-mid")
        now = past_incident(s.store.incident("inc-mid"), everything, Cutoff(seq=10**9, at=later.at), 0.5)
        assert now.confirmed.entity == "cartservice-2" and now.status == "resolved"
    finally:
        s.shutdown()


def test_the_budget_trims_the_least_similar_past_incidents_first(tmp_path, boutique):
    s = Scene(tmp_path, boutique)
    try:
        for name, entities in (("inc-a", ["cartservice-1", "redis-cart"]), ("inc-b", ["cartservice-1"]),
                               ("inc-c", ["cartservice-0", "redis-cart"])):
            s.open(name, entities, hours_before=4)
            s.rank(name, entities[0])
            s.confirm(name, entities[0], note="x " * 60)
        current = s.open("inc-new", ["cartservice-1"], hours_before=0)
        candidates = [RootCause(entity="cartservice-1", confidence=1.0, evidence=[current[0].id])]
        context = IncidentContext.gather(current, boutique, candidates, s.store, s.audit)
        assert [p.id for p in context.past] == ["inc-b", "inc-a", "inc-c"], "most similar first"
        render = lambda d: prompts.load("diagnose").render(**context.diagnose_vars(d))  # noqa: E731
        full, detail, tokens = fit(render, 100_000)
        assert detail.past == 3 and all(p in full[1]["content"] for p in ("inc-a", "inc-b", "inc-c"))
        tight, detail, used = fit(render, tokens - 1)
        shown = tight[1]["content"]
        assert used <= tokens - 1 and detail.past < 3
        assert "inc-b" in shown and "inc-c" not in shown, "the least similar goes first"
    finally:
        s.shutdown()


@pytest.mark.integration
def test_the_model_is_sent_the_past_outcomes(scene, boutique):
    """Through the scripted OpenAI-compatible server: the diagnose request carries them."""
    server = ScriptedLLM().start()
    try:
        config = LLMConfig(provider="openai", base_url=server.url, api_key="k", model="m", timeout_s=5)
        reasoner = LLMReasoner(LLMClient(config, CircuitBreaker("test", 3, 30.0)), contracts=load_contracts(),
                               store=scene.store, audit=scene.audit)
        server.on("diagnosis", good_diagnosis)
        causes, run = reasoner.diagnose(IncidentView("inc-new", scene.current, boutique))
        assert run.reasoner == "llm", run.fallback
        prompt = server.user_prompt("diagnosis")
        assert "inc-old" in prompt and "confirmed cause: cartservice-0 (memory)" in prompt
        assert "outcome: resolved, after restart_service on cartservice-0" in prompt
    finally:
        server.stop()


def test_escalations_and_expired_approvals_are_told_and_an_undated_incident_is_cut_by_time(tmp_path, boutique):
    """Pure: an escalated incident whose approval expired; and without an `incident.opened` record for the
    current incident, only what was recorded by the time of its first event counts."""
    s = Scene(tmp_path, boutique)
    try:
        s.open("inc-esc", ["paymentservice-0"], hours_before=2)
        s.rank("inc-esc", "paymentservice-0")
        s.decide("inc-esc", "#0 restart_service on paymentservice-0", "expired")
        s.act("inc-esc", "#1 notify_oncall on paymentservice-0")
        s.close("inc-esc", "escalated", "no recovery within 600 s")
        records = s.audit.records(incident_id="inc-esc")
        row = s.store.incident("inc-esc")
        seen = past_incident(row, records, Cutoff(seq=None, at=datetime.now(timezone.utc)), 0.5)
        assert seen.status == "escalated" and seen.fixed_by is None, "a page never fixes anything"
        assert seen.expired == ["restart_service on paymentservice-0 (expired)"]
        assert "no recovery within 600 s" in seen.resolution
        assert past_incident(row, records, Cutoff(seq=None, at=records[0].at - timedelta(seconds=1)), 0.5) is None, \
            "nothing was known of it before it opened"
        ranked_only = Cutoff(seq=records[2].seq, at=records[0].at)  # opened and ranked, nothing more yet
        early = past_incident(row, records, ranked_only, 0.5)
        assert (early.status, early.expired, early.executed) == ("open", [], [])
    finally:
        s.shutdown()
