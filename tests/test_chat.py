"""`rtem ask`/`rtem chat` without an LLM: questions answered from a live run's store and audit log, cited."""

import json

import pytest
from typer.testing import CliRunner

from agent.audit import AuditLog
from agent.chat import answer
from agent.chat_entities import Catalog
from agent.cli import app
from agent.store import IncidentStore
from rules.topology import Topology
from tests.test_console import browser, console, rules_dir  # noqa: F401  (fixtures of the console test)

runner = CliRunner()

SHOP = Topology.from_dict({
    "entities": [{"id": i, "type": t} for i, t in [("payments", "service"), ("payments-0", "instance"),
                                                   ("payments-1", "instance"), ("auth", "service"),
                                                   ("auth-1", "instance"), ("orders-db", "database")]],
    "relations": [{"source": f"payments-{n}", "target": "payments", "type": "instance_of"} for n in (0, 1)]
    + [{"source": "auth-1", "target": "auth", "type": "instance_of"}]})


@pytest.mark.parametrize("question", ["why did you restart payments?", "why did you restart the payment service?",
                                      "why did you restart paymentservice?", "what happened to Payments Service?"])
def test_a_plain_service_name_resolves_to_the_service_and_its_instances(question):
    groups, strangers = Catalog([], SHOP).resolve(question)
    assert [(g.name, sorted(g.members)) for g in groups] == [("payments", ["payments", "payments-0", "payments-1"])]
    assert not strangers


def test_names_that_match_nothing_are_strangers_not_some_other_entity():
    catalog = Catalog(["cartservice-0", "cartservice2-0"])  # no topology: instances name their service
    assert catalog.group("cartservice").members == {"cartservice", "cartservice-0", "cartservice2-0"}
    for question, stranger in [("why did you restart paymentservice-9?", "paymentservice-9"),
                               ("why did you restart the billing service?", "billing service"),
                               ("what caused the auth incident?", "auth")]:
        groups, strangers = catalog.resolve(question)
        assert strangers == [stranger] and not groups, (question, groups, strangers)
    assert catalog.unresolved_object("why did you restart frontend?", [r"restart"]) == "frontend"
    assert catalog.unresolved_object("why did you restart the cart service?", [r"restart"]) is None
    assert catalog.resolve("what is the root cause of the last incident?") == ([], [])


def ask(db, question, incident=None):
    with AuditLog(db) as audit:
        return answer(question, IncidentStore(db, readonly=True), audit, incident)


@pytest.mark.integration
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


@pytest.mark.integration
async def test_ungrounded_questions_get_i_dont_know(live_db):
    for question in ("why did you restart paymentservice-9?", "why did you restart payments?",
                     "why did you restart the payment service?", "which rule blocked the restart of paymentservice?", "what is the airspeed of a swallow?",
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


@pytest.mark.integration
def test_rtem_chat_shows_a_prompt_and_leaves_cleanly_on_eof_and_ctrl_c(live_db):
    """On a terminal (a pseudo-terminal here), `rtem chat` prompts `rtem> `, answers, and leaves on Ctrl-D
    or Ctrl-C with exit 0 and no traceback."""
    import fcntl
    import os
    import pty
    import subprocess
    import sys
    import termios
    import time

    def own_terminal() -> None:  # the pty becomes the child's controlling terminal, so Ctrl-C is a SIGINT
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def session(keys: list[bytes]) -> tuple[int, str]:
        main, child = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "agent", "chat", "--db", str(live_db)], stdin=child,
                                stdout=child, stderr=child, close_fds=True, env={**os.environ, "RTEM_LLM": "none"},
                                preexec_fn=own_terminal)
        os.close(child)
        seen = b""

        def read_until(marker: bytes, count: int = 1) -> None:
            nonlocal seen
            deadline = time.monotonic() + 30
            while seen.count(marker) < count and time.monotonic() < deadline:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break

        read_until(b"rtem> ")
        time.sleep(0.2)  # the prompt is printed just before input() sets the terminal up
        for n, key in enumerate(keys, start=2):
            os.write(main, key)
            if key.endswith(b"\n"):
                read_until(b"rtem> ", n)
        for _ in range(5):
            try:
                code = proc.wait(timeout=6)
                break
            except subprocess.TimeoutExpired:
                # CPython's readline loop prints the prompt, then waits in select(); a SIGINT that lands
                # between the two (a loaded machine can hold the process there past the sleep above) is
                # only noticed on the next key. A person presses keys after the prompt has long been up;
                # here the last key is pressed again, as a person would.
                os.write(main, keys[-1])
        else:
            code = proc.wait(timeout=30)
        read_until(b"\x00")  # drain what is left
        os.close(main)
        return code, seen.decode(errors="replace")

    code, text = session([b"what is still open?\n", b"\x04"])
    assert code == 0 and text.count("rtem> ") >= 2 and "still open" in text and "Traceback" not in text, text
    code, text = session([b"\x03"])
    assert code == 0 and "Traceback" not in text, text


@pytest.mark.integration
async def test_the_console_chat_keeps_the_conversation(console, browser):  # noqa: F811  (the imported fixtures)
    """Each question and its answer stay on the page as a turn; the newest carries the answer's test ids."""
    from tests.test_console import expect, signed_in

    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("olga", "operator"))
    await page.goto("/chat")
    for question in ("what is still open?", "who approved the drain?"):
        await page.get_by_test_id("chat-question").fill(question)
        await page.get_by_test_id("chat-ask").click()
        await expect(page.get_by_test_id("turn-question").last).to_contain_text(question)
    turns = page.get_by_test_id("chat-turn")
    await expect(turns).to_have_count(2)
    await expect(turns.first).to_contain_text("what is still open?")
    await expect(page.get_by_test_id("earlier-answer-text")).to_contain_text(incident["id"])
    await expect(page.get_by_test_id("answer-text")).to_contain_text("Nobody has decided yet on drain_host")
    await expect(page.get_by_test_id("chat-question")).to_have_value("")
    await page.get_by_test_id("chat-clear").click()
    await expect(turns).to_have_count(0)
