"""benchmarks/chat_eval.py: how replies are scored (pure), and the eval run over a small recorded analysis
through the deterministic path and through an LLM path served by the scripted OpenAI-compatible server."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.chat import Answer
from agent.chat_entities import Catalog
from agent.config import Settings
from agent.llm import LlmChat
from agent.models import DecisionRecord
from rules.topology import Topology

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import chat_eval  # noqa: E402
from chat_eval import Expect, Recording, expectation, fill_in, score  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
SHOP = Topology.from_dict({
    "entities": [{"id": "payments", "type": "service"}, {"id": "payments-0", "type": "instance"},
                 {"id": "auth", "type": "service"}, {"id": "auth-1", "type": "instance"}],
    "relations": [{"source": "payments-0", "target": "payments", "type": "instance_of"},
                  {"source": "auth-1", "target": "auth", "type": "instance_of"}]})


def record(seq: int, kind: str, incident: str | None = "inc-a", target: str | None = None) -> DecisionRecord:
    inputs = {"proposal": {"type": "restart_instance", "target": target}} if target else {}
    return DecisionRecord(seq=seq, at=NOW, incident_id=incident, kind=kind, inputs=inputs, prev_hash="0", hash="1")


LOG = {1: record(1, "incident.opened"), 2: record(2, "causes.ranked"), 3: record(3, "action.verdict", target="auth-1"),
       4: record(4, "action.verdict", target="payments-0"), 5: record(5, "incident.opened", "inc-b")}
CATALOG = Catalog([], SHOP)
RESTART_PAYMENTS = Expect("answer", ("action.verdict",), ("payments",))


def test_an_answer_about_another_entity_is_wrong_even_with_citations():
    # the case: asked about payments, answered with the restart of auth-1
    reply = Answer("In inc-a, restart_instance on auth-1 was proposed (seq 3).", [3])
    assert score(reply, RESTART_PAYMENTS, LOG, CATALOG) == ("wrong", "cites records about ['auth-1'], not ['payments']")
    right = Answer("In inc-a, restart_instance on payments-0 was proposed (seq 4).", [4])
    assert score(right, RESTART_PAYMENTS, LOG, CATALOG) == ("correct", "")  # an instance stands for its service


def test_an_answer_must_cite_an_expected_kind_name_the_entity_and_stay_in_its_incident():
    assert score(Answer("payments: see seq 1", [1]), RESTART_PAYMENTS, LOG, CATALOG)[0] == "wrong"
    assert score(Answer("see seq 4", [4]), RESTART_PAYMENTS, LOG, CATALOG)[1].startswith("the text names none")
    assert score(Answer("payments-0, seq 99", [99]), RESTART_PAYMENTS, LOG, CATALOG)[0] == "wrong"
    assert score(Answer("payments-0", []), RESTART_PAYMENTS, LOG, CATALOG)[0] == "wrong"
    in_b = Expect("answer", ("incident.opened",), (), "inc-b")
    assert score(Answer("opened (seq 1)", [1]), in_b, LOG, CATALOG)[0] == "wrong"
    assert score(Answer("opened (seq 5)", [5]), in_b, LOG, CATALOG) == ("correct", "")


def test_unknowns_and_nothings():
    dont_know = Answer("I don't know: nothing matches. I searched: audit.", [])
    assert score(dont_know, Expect("unknown"), LOG, CATALOG) == ("correctly_unknown", "")
    assert score(dont_know, RESTART_PAYMENTS, LOG, CATALOG)[0] == "unanswered"  # not wrong, but not answered
    assert score(Answer("auth-1 (seq 3)", [3]), Expect("unknown"), LOG, CATALOG)[0] == "wrong"
    nothing = Answer("Nothing is open.", [], empty=True)
    assert score(nothing, Expect("nothing"), LOG, CATALOG) == ("correct", "")
    assert score(Answer("inc-a is open (seq 3)", [3]), Expect("nothing"), LOG, CATALOG)[0] == "wrong"
    assert score(dont_know, Expect("nothing"), LOG, CATALOG)[0] == "unanswered"


def test_expectations_follow_the_recordings_facts_and_fill_placeholders():
    rec = Recording("demo", Path("x"), None, facts={"demo": True, "held": False},
                    values={"held_target": "orders-db", "last_incident": "inc-z"})
    raw = {"held": {"kinds": ["action.verdict"], "entities": ["{held_target}"]}, "otherwise": "nothing"}
    assert expectation(raw, rec) == Expect("nothing")
    rec.facts["held"] = True
    assert expectation(raw, rec) == Expect("answer", ("action.verdict",), ("orders-db",))
    assert fill_in("what caused {last_incident}?", rec.values) == "what caused inc-z?"
    with pytest.raises(ValueError):
        expectation({"analysis": "unknown"}, rec)


def test_conditions_read_the_recorded_actions_with_services_standing_for_their_instances():
    rec = Recording("r", Path("x"), SHOP, actions={("proposed", "restart_instance", "payments-0")},
                    entities={("involves", "auth-1")})
    raw = {"proposed:restart_instance:payments|paymentservice": {"kinds": ["action.verdict"]}, "otherwise": "unknown"}
    assert expectation(raw, rec).kind == "answer"  # payments-0 is an instance of payments
    assert rec.holds("proposed::payments") and rec.holds("proposed:restart_instance:")
    assert not rec.holds("held:restart_instance:payments") and not rec.holds("proposed:drain_host:payments")
    assert rec.holds("involves:auth") and not rec.holds("central:auth")
    assert expectation({"proposed:restart_instance:auth": "nothing", "otherwise": "unknown"}, rec).kind == "unknown"


def test_the_question_file_has_enough_questions_each_well_formed():
    questions = chat_eval.load_questions()
    assert len(questions) >= 60 and len({q["q"] for q in questions}) == len(questions)
    rec = Recording("analysis", Path("x"), None, facts={"analysis": True}, values={})
    kinds = {expectation(q["expect"], rec).kind for q in questions}
    assert kinds == {"unknown", "nothing", "answer"}


# -- the eval's machinery over a recorded analysis ---------------------------------------------------------

@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> Recording:
    if not chat_eval.DATA.is_dir():  # the recorded cases live beside the checkout, not in it
        pytest.skip(f"no recorded cases at {chat_eval.DATA}")
    return chat_eval.analysis_recording(tmp_path_factory.mktemp("chat-eval"), [0, 1, 2])


@pytest.mark.integration
def test_the_deterministic_path_is_never_wrong_on_a_recorded_analysis(analysis):
    questions = chat_eval.load_questions()
    tally = chat_eval.evaluate(analysis, questions, chat_eval.deterministic(analysis.topology), "deterministic")
    summary = tally.summary()
    assert summary["wrong"] == 0, summary["wrong_answers"]
    assert tally.answered_share >= 0.9, [s for s in tally.scored if s.outcome == "unanswered"]
    assert tally.count("correctly_unknown") >= 15 and len(tally.scored) == len(questions)


@pytest.mark.integration
def test_the_llm_path_is_scored_the_same_way(analysis):
    from tests.llm_server import ScriptedLLM, chat_answer, cited_answer

    questions = chat_eval.load_questions()
    server = ScriptedLLM().start()
    try:
        settings = Settings(llm="openai", llm_base_url=server.url, llm_api_key="sk-test", llm_model="scripted",
                            llm_retry_attempts=1, llm_timeout_s=5)
        # a careful model: it says when the records do not answer; never wrong, and the path runs end to end
        server.default["chat_answer"] = chat_answer("", grounded=False)
        with LlmChat(settings) as chat:
            careful = chat_eval.evaluate(analysis, questions, chat_eval.with_llm(chat), "llm")
        assert careful.count("wrong") == 0, careful.summary()["wrong_answers"]
        assert careful.count("correctly_unknown") >= 15 and server.requests

        # a careless one cites whatever was retrieved last: the scoring must catch it
        server.default["chat_answer"] = cited_answer
        with LlmChat(settings) as chat:
            careless = chat_eval.evaluate(analysis, questions, chat_eval.with_llm(chat), "llm")
        assert careless.count("wrong") >= 10, careless.summary()
    finally:
        server.stop()
