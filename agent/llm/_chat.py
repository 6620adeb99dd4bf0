"""Operators' questions answered by an LLM from retrieved records, within what the asking user may see.

    chat = LlmChat(settings)                     # settings.llm: openai | local; chat.close() when done
    reply = chat.answer("why was the failover refused?", store, audit, visible=may_see)   # a chat.Answer

The model sees only what `_retrieval` gathers through a `chat.Scope` (incidents `visible` rejects, and
their records and events, are never read), ranked and cut to the token budget, scrubbed and quoted as
untrusted data. Its answer must cite only retrieved seqs and event ids; one that does not is re-asked
once with the errors, then the deterministic `chat.answer` replies with the reason in `Answer.fallback`.
So it does when the provider is down, its breaker open or the request refused. An answer the model
says it cannot ground becomes "I don't know" and what was searched, never the model's guess.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import prompts
from agent import chat
from agent.chat import Answer, Scope, Visible

from . import metrics
from ._client import LLMClient, estimate_tokens
from ._errors import BreakerOpen, LLMError, LLMSetupError, LLMUnavailable, ProviderRejected
from ._reasoner import CallRecord
from ._retrieval import Retrieved, fit, prompt_vars, retrieve
from ._schema import tighten
from ._validate import MAX_ERRORS, Checked, _parse

log = logging.getLogger("rtem.llm")

MAX_REASKS = 1  # an answer citing what was not retrieved is re-asked once, then the deterministic answer
NAME = "chat_answer"  # the schema's name in the request
LOCAL_STRING = 400  # a small local model's strings are capped, so its answer fits its token limit


class InvalidChatAnswer(LLMError):
    def __init__(self, errors: list[str]):
        super().__init__(f"the answer was still invalid after {MAX_REASKS} re-ask: " + "; ".join(errors[:3]))


class LlmChat:
    """`answer` has `chat.answer`'s signature and returns its `Answer`: `reasoner` is "llm" when the model
    answered, `fallback` says why the deterministic answer was given instead, `versions` names the model
    and the prompt version either way."""

    def __init__(self, settings, *, client: LLMClient | None = None):
        from . import DEFAULTS, connect  # the package's face imports this module

        if client is None and settings.llm == "none":
            raise LLMSetupError("LlmChat needs an LLM: set RTEM_LLM (or --llm) to openai or local")
        self.prompt = prompts.load("chat")
        self._server = None
        if client is None:
            client, self._server = connect(settings)
        self.client = client
        self.config = client.config
        self.context_tokens = settings.llm_context_tokens or DEFAULTS[self.config.provider]["context_tokens"]
        schema = self.prompt.schema
        self.schema = tighten(schema, max_string=LOCAL_STRING) if self.config.provider == "local" else schema

    @property
    def versions(self) -> dict[str, str]:
        return {"model": self.config.model, "prompt": self.prompt.version, "llm": self.config.provider}

    def answer(self, question: str, store, audit, incident_id: str | None = None, *,
               visible: Visible | None = None) -> Answer:
        asked = chat.Context(" ".join(question.lower().split()), Scope(store, audit, visible), incident_id)
        if asked.strangers:  # a name that is nothing rtem knows: no model may answer about something else
            return self._deterministic(question, store, audit, incident_id, visible,
                                       "the LLM was not asked: the question names an entity rtem does not know")
        found = retrieve(question, Scope(store, audit, visible), incident_id)
        if found.missing or not found.incidents:
            why = f"incident {found.missing!r} is not found or not visible" if found.missing else "no incident to read"
            return self._deterministic(question, store, audit, incident_id, visible, f"the LLM was not asked: {why}")
        # the budget is the context's, less what the prompt takes without records and events
        left_out = len(found.records) + len(found.events)
        bare = self.prompt.render(**prompt_vars(question, Retrieved(incidents=found.incidents, left_out=left_out)))
        found = fit(found, question, self.context_tokens - estimate_tokens("".join(m["content"] for m in bare)))
        found.searched.append(f"sent to the LLM: {len(found.incidents)} incident(s), {len(found.records)} decision "
                              f"records, {len(found.events)} events ({found.left_out} left out for the token budget)")
        messages = self.prompt.render(**prompt_vars(question, found))
        try:
            value, model = self._ask(messages, found, asked.members)
        except Exception as exc:  # LLMError, or anything unforeseen: the deterministic answer is always there
            if not isinstance(exc, LLMError):
                log.exception("the LLM chat answer failed unexpectedly")
            reason, kind = _why(exc)
            metrics.record_decision("chat", "deterministic", kind)
            return self._deterministic(question, store, audit, incident_id, visible, reason)
        metrics.record_decision("chat", "llm")
        versions = {**self.versions, "model": model}
        if not value["grounded"]:
            return Answer(f"I don't know: the records I could retrieve do not answer this. I searched: "
                          f"{'; '.join(found.searched)}.", searched=found.searched, reasoner="llm", versions=versions)
        shown = found.shown_event_ids
        cited = [*(int(s) for s in value["citations"]["seqs"]), *(shown[e] for e in value["citations"]["events"])]
        return Answer(value["answer"].strip(), list(dict.fromkeys(cited)), found.searched, intent="llm",
                      reasoner="llm", versions=versions)

    def close(self) -> None:
        self.client.close()
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> LlmChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the conversation -------------------------------------------------------------------------

    def _ask(self, messages: list[dict[str, str]], found: Retrieved,
             about: set[str]) -> tuple[dict[str, Any], str]:
        """The valid answer and the model that gave it; re-asked with the errors at most MAX_REASKS times.
        `about`: the entities the question names (with their instances), which the cited records must be about."""
        conversation = list(messages)
        errors: list[str] = []
        for attempt in range(MAX_REASKS + 1):
            record = CallRecord("chat", self.config.model, self.prompt.hash)
            try:
                completion = self.client.complete(conversation, self.schema, NAME)
            except LLMError as exc:
                record.outcome, record.error = "error", str(exc)[:200]
                _observe(record)
                raise
            record.model = completion.model or record.model
            record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
            record.latency_s, record.attempts = completion.latency_s, completion.attempts
            record.cost_usd = self.config.cost(completion.tokens_in, completion.tokens_out)
            checked = check_answer(completion.text, self.prompt.schema, found, about)
            if checked.ok:
                _observe(record)
                return checked.value, record.model
            errors = checked.errors
            record.outcome = "re-asked" if attempt < MAX_REASKS else "fallback"
            record.error = "; ".join(errors)[:300]
            _observe(record)
            conversation += [{"role": "assistant", "content": completion.text[:4000]},
                             {"role": "user", "content": _reask(errors)}]
        raise InvalidChatAnswer(errors)

    def _deterministic(self, question: str, store, audit, incident_id: str | None, visible: Visible | None,
                       reason: str) -> Answer:
        log.info("chat: deterministic answer: %s", reason)
        reply = chat.answer(question, store, audit, incident_id, visible=visible)
        reply.fallback, reply.versions = reason, self.versions
        return reply


def check_answer(text: str, schema: dict[str, Any], found: Retrieved,
                 about: set[str] = frozenset()) -> Checked:
    """The answer schema, then grounding: a grounded answer cites at least one retrieved record or event,
    and nothing else (neither in `citations` nor as `seq N` in its text); and when the question names
    entities (`about`: them and their instances), at least one cited record or event is about one of them,
    so an answer about another entity (a restart of auth-1 for "why did you restart payments?") is refused."""
    checked = _parse(text, schema)
    if checked.errors or not checked.value["grounded"]:
        return checked
    value, seqs, shown = checked.value, found.seqs, found.shown_event_ids
    named = [int(s) for s in re.findall(r"\bseq\s+(\d{1,12})\b", value["answer"])]
    stray = [s for s in dict.fromkeys([*value["citations"]["seqs"], *named]) if s not in seqs]
    if stray:
        checked.errors.append(f"$.citations.seqs: {', '.join(map(str, stray))} not among the retrieved decision "
                              f"records; the retrieved seqs are {', '.join(map(str, sorted(seqs)[:40]))}")
    unknown = [e for e in value["citations"]["events"] if e not in shown]
    if unknown:
        checked.errors.append(f"$.citations.events: {', '.join(map(repr, unknown[:5]))} not among the retrieved "
                              f"events; cite only event ids listed under EVENTS")
    if not value["citations"]["seqs"] and not value["citations"]["events"]:
        checked.errors.append("$.citations: a grounded answer cites the records it rests on; if none does, "
                              "set grounded to false")
    if about and not stray and not unknown and not _cites_about(value["citations"], found, about):
        checked.errors.append(f"$.citations: the question is about {', '.join(sorted(about)[:6])}; none of the cited "
                              "records or events is; cite those about it, or set grounded to false")
    if not value["answer"].strip():
        checked.errors.append("$.answer: empty")
    if checked.errors:
        checked.value, checked.errors = None, checked.errors[:MAX_ERRORS]
    return checked


def _cites_about(citations: dict[str, Any], found: Retrieved, about: set[str]) -> bool:
    """Whether any cited record (its inputs and decision) or event (its subject and attributes) names one of
    the entities `about`, as a whole word."""
    by_seq = {r.seq: r for r in found.records}
    by_id = {e["id"]: e for e in found.events}
    shown = found.shown_event_ids
    texts = [json.dumps([by_seq[s].inputs, by_seq[s].decision], default=str) for s in citations["seqs"] if s in by_seq]
    texts += [json.dumps(by_id[shown[e]], default=str) for e in citations["events"] if shown.get(e) in by_id]
    words = {w for t in texts for w in re.findall(r"[\w-]+(?:[.:][\w-]+)*", t)}
    return bool(words & about)


def _reask(errors: list[str]) -> str:
    listed = "\n".join(f"- {e}" for e in errors[:MAX_ERRORS])
    return ("Your previous answer was rejected:\n" + listed + "\nAnswer again with one JSON object that matches "
            "the answer schema, citing only seqs and event ids retrieved above; if they do not answer the "
            "question, set grounded to false.")


def _why(exc: Exception) -> tuple[str, str]:
    """The fallback's reason (for the answer) and its kind (for metrics)."""
    if isinstance(exc, BreakerOpen):
        return f"degraded mode: {exc}", "breaker_open"
    if isinstance(exc, InvalidChatAnswer):
        return str(exc), "invalid"
    if isinstance(exc, ProviderRejected):
        return str(exc), "rejected"
    if isinstance(exc, LLMUnavailable):
        return f"the LLM provider is unavailable: {exc}", "unavailable"
    return f"error: {exc}", "error"


def _observe(record: CallRecord) -> None:
    metrics.record_call(record.task, record.model, record.outcome, record.tokens_in, record.tokens_out,
                        record.latency_s, record.cost_usd)
    log.info(record.line())
