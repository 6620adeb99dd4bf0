"""`rtem ask`/`rtem chat` with an LLM: answers from retrieved records only, limited to what the user may see,
against a real OpenAI-compatible HTTP server scripted per test, over a live run's store and audit log."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.chat import answer
from agent.cli import app
from agent.config import Settings
from agent.llm import LlmChat, estimate_tokens
from agent.store import IncidentStore
from tests.helpers import assert_bounded
from tests.llm_server import ScriptedLLM, Status, chat_answer, cited_answer, retrieved

pytestmark = pytest.mark.integration

MODEL = "scripted-model"
runner = CliRunner()


@pytest.fixture
def llm():
    server = ScriptedLLM().start()
    yield server
    server.stop()


def chat_for(server: ScriptedLLM, **settings) -> LlmChat:
    return LlmChat(Settings(llm="openai", llm_base_url=server.url, llm_api_key="sk-test-key", llm_model=MODEL,
                            llm_retry_attempts=2, llm_retry_initial_s=0.01, llm_timeout_s=5, **settings))


def ask(db, question, *, llm: ScriptedLLM | None = None, incident=None, visible=None, **settings):
    store = IncidentStore(db, readonly=True)
    with AuditLog(db) as audit:
        if llm is None:
            return answer(question, store, audit, incident, visible=visible)
        with chat_for(llm, **settings) as chat:
            return chat.answer(question, store, audit, incident, visible=visible)


def incidents(db) -> tuple[dict, dict]:
    """The resolved cartservice incident and the database incident whose failover was refused."""
    rows = IncidentStore(db, readonly=True).incidents()
    cart = next(r for r in rows if "cartservice-0" in r["entities"])
    database = next(r for r in rows if r["id"] != cart["id"] and "productcatalog" in r["entities"])
    return cart, database


def belonging_to(db, incident_id: str) -> tuple[set[int], set[str]]:
    with AuditLog(db) as audit:
        seqs = {r.seq for r in audit.records(incident_id=incident_id)}
    store = IncidentStore(db, readonly=True)
    return seqs, {e.id for e in store.events(incident_id)}


async def test_a_good_answer_cites_only_retrieved_records(live_db, llm, monkeypatch):
    cart, _ = incidents(live_db)
    llm.on("chat_answer", cited_answer)
    reply = ask(live_db, "why did you restart cartservice-0?", llm=llm)

    [request] = llm.requests
    seqs, events = retrieved(request)
    assert reply.reasoner == "llm" and reply.seqs == seqs[-1:] and reply.event_ids == events[:1], reply
    assert reply.text == f"See seq {seqs[-1]}." and reply.fallback is None
    assert reply.versions["model"] == MODEL and reply.versions["prompt"].startswith("chat:")
    with AuditLog(live_db) as audit:
        kinds = {r.kind for r in audit.records(incident_id=cart["id"]) if r.seq in seqs}
    assert {"causes.ranked", "action.verdict", "action.executed"} <= kinds, "the records the question is about"
    prompt = llm.user_prompt("chat_answer")
    assert "<untrusted-data>" in prompt and cart["id"] in prompt
    assert_bounded(request["response_format"]["json_schema"]["schema"])

    for name, value in {"RTEM_LLM_BASE_URL": llm.url, "RTEM_LLM_API_KEY": "sk-test-key", "RTEM_LLM_MODEL": MODEL}.items():
        monkeypatch.setenv(name, value)
    llm.on("chat_answer", cited_answer)
    result = runner.invoke(app, ["ask", "why did you restart cartservice-0?", "--json", "--db", str(live_db),
                                 "--llm", "openai"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["reasoner"] == "llm" and body["citations"]["seqs"] and body["versions"]["model"] == MODEL
    llm.on("chat_answer", cited_answer)
    session = runner.invoke(app, ["chat", "--db", str(live_db), "--llm", "openai"],
                            input="why did you restart cartservice-0?\nquit\n")
    assert session.exit_code == 0 and "cites: seq" in session.stdout, session.output
    assert f"answered by the LLM: model {MODEL}" in session.output


async def test_a_citation_that_was_not_retrieved_is_reasked_once_then_the_deterministic_answer(live_db, llm):
    question = "which rule blocked the failover?"
    invented = chat_answer("Rule no-teleport blocked it (seq 9999).", [9999])
    llm.on("chat_answer", invented, invented)
    reply = ask(live_db, question, llm=llm)

    assert llm.tasks() == ["chat_answer", "chat_answer"]
    reask = llm.requests[1]["messages"][-1]["content"]
    assert "9999 not among the retrieved decision records" in reask
    assert reply.reasoner == "deterministic" and "no-teleport" not in reply.text
    assert reply.fallback.startswith("the answer was still invalid after 1 re-ask") and "9999" in reply.fallback
    assert reply.text == ask(live_db, question).text and "no-failover-while-replica-lags" in reply.text


async def test_the_llm_never_receives_records_of_an_incident_the_user_may_not_see(live_db, llm):
    cart, database = incidents(live_db)
    for hidden, question in ((cart, "why did you restart cartservice-0?"),
                             (database, "which rule blocked the failover?"),
                             (database, "what changed before the errors started?")):
        seqs, events = belonging_to(live_db, hidden["id"])
        llm.on("chat_answer", cited_answer, cited_answer)
        ask(live_db, question, llm=llm)
        assert hidden["id"] in llm.user_prompt("chat_answer", -1), "seen by a user who may see everything"
        sent = len(llm.requests)
        reply = ask(live_db, question, llm=llm, visible=lambda row, hidden=hidden: row["id"] != hidden["id"])
        assert reply.reasoner == "llm" and len(llm.requests) == sent + 1, (question, reply)
        for request in llm.requests[sent:]:
            offered_seqs, offered_events = retrieved(request)
            text = json.dumps(request["messages"])
            assert hidden["id"] not in text, question
            assert not seqs & set(offered_seqs) and not events & set(offered_events), question
        assert not seqs & set(reply.seqs) and not events & set(reply.event_ids), question
        assert hidden["id"] not in reply.text

    # an incident the user may not see is not found, by id or by name, and the LLM is not even asked
    sent = len(llm.requests)
    for incident, question in ((cart["id"], "what changed before the errors started?"),
                               (None, f"how long did {cart['id']} take to resolve?")):
        reply = ask(live_db, question, llm=llm, incident=incident, visible=lambda row: row["id"] != cart["id"])
        assert reply.text.startswith("I don't know") and "not found or not visible" in reply.text, reply.text
        assert not reply.citations and reply.fallback.startswith("the LLM was not asked")
    assert len(llm.requests) == sent


async def test_an_answer_the_llm_cannot_ground_is_i_dont_know(live_db, llm):
    llm.on("chat_answer", chat_answer("Probably cosmic rays.", grounded=False))
    reply = ask(live_db, "what is the airspeed of a swallow?", llm=llm, llm_context_tokens=1000)
    assert reply.text.startswith("I don't know") and "cosmic" not in reply.text, reply.text
    assert not reply.citations and reply.reasoner == "llm"
    [sent] = [s for s in reply.searched if s.startswith("sent to the LLM")]
    assert "(0 left out" not in sent, "the small budget left records out"
    assert estimate_tokens("".join(llm.texts("chat_answer"))) <= 1000


async def test_a_provider_that_fails_gives_the_deterministic_answer(live_db, llm):
    llm.on("chat_answer", Status(500), Status(503))
    question = "which rule blocked the failover?"
    reply = ask(live_db, question, llm=llm)
    assert llm.tasks() == ["chat_answer", "chat_answer"]
    assert reply.reasoner == "deterministic" and reply.text == ask(live_db, question).text
    assert reply.fallback.startswith("the LLM provider is unavailable") and "HTTP 503" in reply.fallback
    assert reply.versions["prompt"].startswith("chat:")


async def test_the_deterministic_answer_hides_what_the_user_may_not_see(live_db):
    cart, database = incidents(live_db)
    not_cart = lambda row: row["id"] != cart["id"]  # noqa: E731
    not_database = lambda row: row["id"] != database["id"]  # noqa: E731

    assert "restart_instance on cartservice-0" in ask(live_db, "why did you restart cartservice-0?").text
    why = ask(live_db, "why did you restart cartservice-0?", visible=not_cart)
    assert why.text.startswith("I don't know") and not why.citations and cart["id"] not in why.text, why.text

    assert "no-failover-while-replica-lags" in ask(live_db, "which rule blocked the failover?").text
    blocked = ask(live_db, "which rule blocked the failover?", visible=not_database)
    assert blocked.text.startswith("I don't know") and "no-failover" not in blocked.text, blocked.text


    took = ask(live_db, f"how long did {cart['id']} take to resolve?", visible=not_cart)
    assert took.text.startswith("I don't know") and "not found or not visible" in took.text
    assert f"{cart['mttr_s']:.1f}" not in took.text and not took.citations
    changed = ask(live_db, "what changed before the errors started?", incident=cart["id"], visible=not_cart)
    assert changed.text.startswith("I don't know") and "chg-1" not in changed.text and not changed.citations


async def test_a_question_naming_an_unknown_entity_never_reaches_the_llm(live_db, llm):
    llm.on("chat_answer", cited_answer)
    reply = ask(live_db, "why did you restart billingservice-9?", llm=llm)
    assert llm.requests == [], "the model is not asked about a name rtem does not know"
    assert reply.reasoner == "deterministic" and "does not know" in reply.fallback
    assert reply.text.startswith("I don't know") and "cartservice" not in reply.text
