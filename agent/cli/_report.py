"""`rtem report` (an incident's rationale report) and `rtem ask | chat` (grounded answers to questions)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import DbOpt, IncidentArg, JsonOpt, LlmChoice, LlmOpt, err, fail, open_store, out, settings

IncidentOpt = Annotated[Optional[str], typer.Option("--incident", help="Ask about this incident.")]


class ReportFormat(str, Enum):
    md = "md"
    html = "html"


def report(incident_id: IncidentArg,
           format: Annotated[ReportFormat, typer.Option("--format", help="Markdown or self-contained HTML.")] = ReportFormat.md,
           out_file: Annotated[Optional[Path], typer.Option("--out", help="Write here instead of stdout.")] = None,
           db: DbOpt = None) -> None:
    """The rationale report of one incident, rebuilt from the store and the audit log (see docs/operators.md)."""
    from ..audit import AuditLog
    from ..report import build_report

    store = open_store(db)
    with AuditLog(store.db) as audit:
        try:
            text = build_report(store, audit, incident_id).render(format.value)
        except LookupError as exc:
            fail(str(exc), 1)
    if out_file:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


def ask(question: Annotated[str, typer.Argument(help="A question about incidents, e.g. \"what is still open?\"")],
        incident: IncidentOpt = None, json_out: JsonOpt = False, db: DbOpt = None, llm: LlmOpt = None) -> None:
    """Answer one question from the store and the audit log, citing decision records and event ids."""
    from ..audit import AuditLog

    store = open_store(db)
    reply_to, close = _answerer(llm)
    try:
        with AuditLog(store.db) as audit:
            reply = reply_to(question, store, audit, incident)
    finally:
        close()
    if json_out:
        print(json.dumps(reply.to_dict(), indent=2))
    else:
        _print_answer(reply)


PROMPT = "rtem> "


def chat(incident: IncidentOpt = None, db: DbOpt = None, llm: LlmOpt = None) -> None:
    """Ask questions one per line at the `rtem> ` prompt, until `quit`, Ctrl-D or Ctrl-C; answers are grounded
    in the store and the audit log. Piped input is read the same way, without the prompt."""
    from ..audit import AuditLog

    store = open_store(db)
    reply_to, close = _answerer(llm)
    interactive = sys.stdin.isatty()
    if interactive:
        err.print("Ask about incidents (e.g. \"what is still open?\", \"why did you restart payments?\"); "
                  "quit, Ctrl-D or Ctrl-C to leave.", style="dim", markup=False, highlight=False)
    try:
        with AuditLog(store.db) as audit:
            for question in _questions(interactive):
                if question.lower() in ("quit", "exit", "q"):
                    break
                if question:
                    _print_answer(reply_to(question, store, audit, incident))
    except KeyboardInterrupt:
        pass  # Ctrl-C leaves the conversation, as quit does
    finally:
        close()
        if interactive:
            sys.stdout.write("\n")


def _questions(interactive: bool):
    """Lines of input, stripped: with a prompt (and line editing) on a terminal, plain when piped."""
    if not interactive:
        for line in sys.stdin:
            yield line.strip()
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield input(PROMPT).strip()
        except EOFError:
            return


def _answerer(llm: LlmChoice | None):
    """The answering function for --llm (default RTEM_LLM): `chat.answer`, or an LLM's with retrieval
    (agent.llm.LlmChat); and what to call when done with it."""
    from ..chat import answer

    cfg = settings(llm)
    if cfg.llm == "none":
        return answer, lambda: None
    from ..llm import LLMSetupError, LlmChat

    try:
        with_llm = LlmChat(cfg)
    except LLMSetupError as exc:
        fail(str(exc))
    return with_llm.answer, with_llm.close


def _print_answer(reply) -> None:
    out.print(reply.text, markup=False, highlight=False)
    if reply.citations:
        out.print("cites: " + ", ".join(f"seq {c}" if isinstance(c, int) else f"event {c}" for c in reply.citations),
                  markup=False, highlight=False)
    if reply.reasoner == "llm":
        err.print(f"answered by the LLM: model {reply.versions.get('model')}, prompt {reply.versions.get('prompt')}",
                  style="dim", markup=False, highlight=False)
    elif reply.fallback:
        err.print(f"answered without the LLM: {reply.fallback}", style="dim", markup=False, highlight=False)
