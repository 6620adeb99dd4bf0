"""Fault-label agreement (issue 17, item 2): the LLM may reorder the candidates, but its fault type for an
entity stands only when that entity's evidence speaks of it; otherwise the deterministic label stands and
the run's notes say so. Pure: the deterministic reasoner's `fault_kinds` and the combining rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.llm import combine
from agent.models import RootCause
from agent.reasoner import DeterministicReasoner
from bus import Event

START = datetime(2026, 12, 3, 10, tzinfo=timezone.utc)


def _metric(i: int, subject: str, metric: str, direction: str = "up") -> Event:
    return Event(id=f"m{i:04d}", source="/t", type="rtem.metric.anomaly", time=START + timedelta(seconds=10 + i),
                 subject=subject, severity="warning", message=f"{metric} anomalous ({direction})",
                 attributes={"metric": metric, "direction": direction})


def _deploy(subject: str) -> Event:
    return Event(id="deploy-1", source="/t", type="rtem.change.deploy", time=START, subject=subject,
                 severity="info", message=f"deployed {subject} v2", attributes={"version": "v2"})


def _hyp(entity: str, fault: str, confidence: float = 0.9) -> dict:
    return {"entity": entity, "fault_type": fault, "confidence": confidence, "evidence": [],
            "explanation": f"{entity} is {fault}"}


@pytest.fixture
def db_exhaustion() -> list[Event]:
    """The database's connections and network misbehave; a checkout instance only gets slow."""
    events = [_metric(i, "orders-db", "pg_stat_connections") for i in range(6)]
    events += [_metric(10 + i, "orders-db", "net_retransmits") for i in range(3)]
    events += [_metric(20 + i, "checkout-0", "http_latency_p99") for i in range(3)]
    return events


def test_fault_kinds_are_the_kinds_of_signal_each_candidate_has(shop, db_exhaustion):
    kinds = DeterministicReasoner().fault_kinds(db_exhaustion, shop)
    assert {"connections", "network"} <= kinds["orders-db"]
    assert "cpu" not in kinds["orders-db"] and "memory" not in kinds["orders-db"]
    assert "latency" in kinds["checkout-0"]
    assert all("unknown" not in k for k in kinds.values())
    ranked = DeterministicReasoner().rank(db_exhaustion, shop, 10)
    assert {c.entity for c in ranked} <= set(kinds), "every candidate has its kinds"
    assert all(c.fault_type in kinds[c.entity] for c in ranked if c.fault_type != "unknown"), \
        "a candidate's own label is always supported"


def test_a_change_adds_its_fault_to_what_the_evidence_supports(shop):
    events = [_deploy("cart-0")] + [_metric(i, "cart-0", "container_cpu_usage_seconds") for i in range(5)]
    kinds = DeterministicReasoner().fault_kinds(events, shop)
    assert {"bad_deploy", "cpu"} <= kinds["cart-0"]
    assert "bad_config" not in kinds["cart-0"]


def test_an_unsupported_llm_label_is_dropped_and_the_deterministic_one_stands(shop, db_exhaustion):
    det = DeterministicReasoner()
    candidates = det.rank(db_exhaustion, shop, 10)
    db = next(c for c in candidates if c.entity == "orders-db")
    causes, notes = combine(candidates, [_hyp("orders-db", "cpu")], 5,
                            supported=det.fault_kinds(db_exhaustion, shop))
    merged = next(c for c in causes if c.entity == "orders-db")
    assert merged.fault_type == db.fault_type != "cpu"
    assert merged.explanation.startswith("LLM: "), "the hypothesis still counts; only its label is dropped"
    note = next(n for n in notes if "dropped:" in n)
    assert note.startswith("combining: fault type 'cpu' for orders-db dropped: the evidence speaks of ")
    assert "connections" in note and "network" in note


def test_a_supported_llm_label_replaces_the_deterministic_one(shop, db_exhaustion):
    det = DeterministicReasoner()
    candidates = det.rank(db_exhaustion, shop, 10)
    db = next(c for c in candidates if c.entity == "orders-db")
    other = next(k for k in ("network", "connections") if k != db.fault_type)
    causes, notes = combine(candidates, [_hyp("orders-db", other)], 5, supported=det.fault_kinds(db_exhaustion, shop))
    assert next(c for c in causes if c.entity == "orders-db").fault_type == other
    assert not any("dropped:" in n for n in notes)


def test_agreement_in_the_abstract():
    det = [RootCause(entity="a", fault_type="connections", confidence=0.7, evidence=["e1"], explanation="A"),
           RootCause(entity="b", fault_type="cpu", confidence=0.3, evidence=["e2"], explanation="B")]
    hyps = [_hyp("a", "memory"), _hyp("b", "cpu", 0.5)]
    supported = {"a": {"connections", "network"}, "b": set()}
    causes, notes = combine(det, hyps, 5, supported=supported)
    assert [(c.entity, c.fault_type) for c in causes] == [("a", "connections"), ("b", "cpu")]
    assert notes == ["combining: b stays where the evidence ranks it: not a close call with a",
                     "combining: fault type 'memory' for a dropped: the evidence speaks of connections, network"]
    # the deterministic label is always supported, and `unknown` never replaces a label
    causes, notes = combine(det, [_hyp("b", "cpu"), _hyp("a", "unknown")], 5, supported={})
    assert {c.entity: c.fault_type for c in causes} == {"a": "connections", "b": "cpu"}
    assert not any("dropped:" in n for n in notes)
    # an entity with no supported kinds at all
    causes, notes = combine([RootCause(entity="c", confidence=1.0)], [_hyp("c", "disk_io")], 5, supported={"c": set()})
    assert causes[0].fault_type == "unknown"
    assert notes == ["combining: fault type 'disk_io' for c dropped: the evidence speaks of no fault type"]
    # without `supported`, nothing is checked (the old rule)
    causes, _ = combine(det, [_hyp("a", "memory")], 5)
    assert causes[0].fault_type == "memory"


def test_a_model_reorders_only_the_close_calls_of_the_evidence():
    """However sure a model is, a candidate the evidence ranks clearly lower stays where it is; among
    candidates the evidence could not separate, the model decides."""
    det = [RootCause(entity="a", fault_type="cpu", confidence=0.50, evidence=["e1"], explanation="A"),
           RootCause(entity="b", fault_type="cpu", confidence=0.45, evidence=["e2"], explanation="B"),
           RootCause(entity="c", fault_type="cpu", confidence=0.05, evidence=["e3"], explanation="C")]
    causes, notes = combine(det, [_hyp("c", "cpu", 0.99)], 5, supported={})
    assert [c.entity for c in causes] == ["a", "b", "c"]
    assert [c.confidence for c in causes] == [0.5, 0.45, 0.05], "no weight for a hypothesis off the close calls"
    assert notes == ["combining: c stays where the evidence ranks it: not a close call with a"]
    causes, notes = combine(det, [_hyp("b", "cpu", 0.99)], 5, supported={})
    assert [c.entity for c in causes] == ["b", "a", "c"]
    assert notes == ["combining: the LLM moved b ahead of a"]
