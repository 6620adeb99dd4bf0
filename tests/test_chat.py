"""`rtem ask`/`rtem chat` without an LLM: questions answered from a live run's store and audit log, cited."""

import json

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.chat import answer
from agent.cli import app
from agent.store import IncidentStore

pytestmark = pytest.mark.integration

runner = CliRunner()


def ask(db, question, incident=None):
    with AuditLog(db) as audit:
        return answer(question, IncidentStore(db, readonly=True), audit, incident)


async def test_the_common_questions_get_cited_answers(live_db):
    store = IncidentStore(live_db, readonly=True)
    resolved = next(r for r in store.incidents() if r["status"] == "resolved")
    with AuditLog(live_db) as audit:
        records = {r.seq: r for r in audit.records()}

    why = ask(live_db, "why did you restart cartservice-0?")
    assert "restart_instance on cartservice-0" in why.text and "allow" in why.text, why.text
    kinds = {records[s].kind for s in why.seqs}
    assert {"causes.ranked", "actions.proposed", "action.verdict", "action.executed"} <= kinds, why
    assert set(why.event_ids) <= {f"a{i}" for i in range(10)} and why.event_ids

    changed = ask(live_db, "what changed before the errors started?", resolved["id"])
    assert "chg-1" in changed.text and "rtem.change.config on cartservice-0" in changed.text, changed.text
    assert "chg-1" in changed.event_ids and "a0" in changed.event_ids

    blocked = ask(live_db, "which rule blocked the failover?")
    assert "no-failover-while-replica-lags" in blocked.text and "failover_database" in blocked.text, blocked.text
    assert all(records[s].kind == "action.verdict" for s in blocked.seqs) and blocked.seqs

    still = ask(live_db, "what is still open?")
    open_rows = [r for r in store.incidents() if r["status"] not in ("resolved", "escalated")]
    assert all(r["id"] in still.text for r in open_rows) and resolved["id"] not in still.text, still.text
    assert still.seqs or not open_rows

    took = ask(live_db, f"how long did {resolved['id']} take to resolve?")
    assert f"{resolved['mttr_s']:.1f} s" in took.text, took.text
    assert {records[s].kind for s in took.seqs} == {"incident.opened", "incident.closed"}


async def test_ungrounded_questions_get_i_dont_know(live_db):
    for question in ("why did you restart paymentservice-9?", "what is the airspeed of a swallow?",
                     "how long did INC-12 take to resolve?", "which rule blocked the teleport?"):
        reply = ask(live_db, question)
        assert reply.text.startswith("I don't know"), (question, reply.text)
        assert reply.searched and not reply.citations

    result = runner.invoke(app, ["ask", "why did you restart cartservice-0?", "--json", "--db", str(live_db)])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["citations"]["seqs"] and body["intent"] == "why"
    chat = runner.invoke(app, ["chat", "--db", str(live_db)], input="what is still open?\nquit\n")
    assert chat.exit_code == 0 and "open" in chat.stdout, chat.output
