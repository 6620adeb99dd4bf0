"""The LLM reasoner: hypotheses and proposals from an OpenAI-compatible model, with the deterministic
reasoner as its evidence base and its fallback.

    diagnose   deterministic candidates → context (token budget) → diagnose prompt → validated answer
               (re-asked with the errors at most twice) → combined with the evidence (see _combine)
    propose    the diagnosis's context → propose prompt → validated actions, proposed_by "llm:<model>"

Either step falls back to the deterministic answer, recording why in `ReasonerRun.fallback`: an answer
still invalid after two re-asks, the provider unavailable (timeouts, 429/5xx after retries), its breaker
open (degraded mode), the incident's budget of calls or tokens used up, or a refused request. Nothing
the LLM says reaches an executor without the graph's guard judging it like any other proposal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import prompts
from agent.models import IncidentView, ReasonerRun, RootCause
from agent.reasoner import DeterministicReasoner
from rules import ActionContract, Proposal

from . import metrics
from ._budget import IncidentBudget
from ._client import LLMClient, estimate_tokens
from ._combine import combine
from ._context import IncidentContext, fit
from ._errors import BreakerOpen, BudgetExhausted, LLMError, LLMUnavailable, ProviderRejected
from ._tools import PrometheusTool, ToolCall
from ._schema import sent_diagnosis_schema, sent_proposal_schema, validation_proposal_schema
from ._validate import Checked, check_diagnosis, check_proposals, reask_message

log = logging.getLogger("rtem.llm")

MAX_REASKS = 2  # a broken answer is re-asked at most twice, then the deterministic answer is used
MAX_PROPOSALS = 4
RELATED_CAUSES = 3  # proposals may act on the top three causes and their neighbours


@dataclass
class CallRecord:
    """Telemetry of one provider call, kept with the decision and exported as metrics."""

    task: str
    model: str
    prompt: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    outcome: str = "valid"  # valid | re-asked | fallback | error
    attempts: int = 0
    cost_usd: float | None = None
    error: str = ""

    def line(self) -> str:
        cost = f", ~${self.cost_usd:.6f}" if self.cost_usd is not None else ""
        error = f": {self.error}" if self.error else ""
        return (f"{self.task} call: model {self.model}, prompt {self.prompt}, tokens {self.tokens_in} in / "
                f"{self.tokens_out} out, {self.latency_s:.2f} s, {self.attempts} attempt(s){cost}, "
                f"{self.outcome}{error}")


class InvalidAnswer(LLMError):
    def __init__(self, errors: list[str]):
        super().__init__(f"the answer was still invalid after {MAX_REASKS} re-asks: " + "; ".join(errors[:3]))


@dataclass
class _Incident:
    """One step's working set: the context, the budget left, and whether the incident is degraded."""

    context: IncidentContext
    budget: IncidentBudget
    degraded: bool = False
    calls: list[CallRecord] = field(default_factory=list)
    view: IncidentView | None = None  # given when the model may call tools about the incident


class LLMReasoner:
    """Implements the graph's Reasoner protocol; returns `(answer, ReasonerRun)` pairs."""

    name = "llm"
    version = "llm-1"

    def __init__(self, client: LLMClient, *, contracts: Mapping[str, ActionContract], store=None,
                 fallback: DeterministicReasoner | None = None, context_tokens: int = 6000,
                 budget_calls: int = 6, budget_tokens: int = 60000, on_close: Callable[[], None] | None = None,
                 tools: PrometheusTool | None = None, audit=None):
        self.client = client
        self.config = client.config
        self.contracts = dict(contracts)
        self.store = store
        self.audit = audit  # dates what was known of similar past incidents (their confirmations, outcomes)
        self.fallback = fallback or DeterministicReasoner()
        self.context_tokens = context_tokens
        self.budget_calls = budget_calls
        self.budget_tokens = budget_tokens
        self._on_close = on_close
        self.tools = tools  # read-only tools offered while diagnosing (query_prometheus)
        # The prompt version (template + packaged schema hash) is what the audit log records; the schemas
        # rtem validates with and sends are derived from it, the contracts and the incident (_schema.py).
        self.prompts = {"diagnose": prompts.load("diagnose"), "propose": prompts.load("propose")}
        self.proposal_validation = validation_proposal_schema(self.prompts["propose"].schema, self.contracts)
        self.compact = self.config.provider == "local"
        self.proposed_by = f"llm:{self.config.model}"[:64]

    @property
    def versions(self) -> dict[str, str]:
        """What build() records as the service's model and prompt versions."""
        return {"model": self.config.model, "llm": self.config.provider,
                "prompt": ",".join(p.version for p in self.prompts.values())}

    # -- diagnose ---------------------------------------------------------------------------------

    def diagnose(self, view: IncidentView, limit: int = 5) -> tuple[list[RootCause], ReasonerRun]:
        """The view's history (the background learned from earlier incidents) goes to the deterministic scoring."""
        events, topology = view.events, view.topology
        candidates = self.fallback.rank(events, topology, max(limit, len(topology.entities)), history=view.history,
                                         learned=view.learned)
        prompt = self.prompts["diagnose"]
        try:
            context = IncidentContext.gather(events, topology, candidates, self.store, self.audit)
        except Exception as exc:  # a context we cannot build must not stop the incident
            log.exception("building the LLM context failed")
            return candidates[:limit], self._fallback_run("diagnose", prompt, [], f"error: {exc}", "error")
        incident = _Incident(context, IncidentBudget(self.budget_calls, self.budget_tokens), view=view)
        if not candidates:
            return [], ReasonerRun(reasoner=self.fallback.name, versions=self._versions(prompt, self._det_version()),
                                   notes=["the LLM was not asked: no entity has evidence in this incident"])
        messages, detail, tokens = fit(lambda d: prompt.render(**context.diagnose_vars(d)), self.context_tokens)
        notes = [f"context: about {tokens} tokens (budget {self.context_tokens}), {detail.groups} event groups max"]

        def check(text: str) -> Checked:
            return check_diagnosis(text, prompt.schema, topology, context.admissible, context.event_ids)

        shown = [c.entity for c in candidates[:detail.candidates]]
        schema = sent_diagnosis_schema(prompt.schema, shown, self.compact)
        try:
            answer, checked_notes = self._ask("diagnose", prompt, messages, schema, check, incident)
        except Exception as exc:  # LLMError, or anything unforeseen: the deterministic answer is always there
            if not isinstance(exc, LLMError):
                log.exception("the LLM diagnosis failed unexpectedly")
            return candidates[:limit], self._fallback_run("diagnose", prompt, incident.calls, *self._why(exc, incident),
                                              notes=notes)
        causes, combine_notes = combine(candidates, answer["hypotheses"], limit)
        metrics.record_decision("diagnose", "llm")
        summary = answer.get("summary", "").strip()
        return causes, self._run(prompt, incident.calls, notes + checked_notes + combine_notes
                                 + ([f"LLM summary: {summary[:300]}"] if summary else []))

    # -- propose ----------------------------------------------------------------------------------

    def propose(self, view: IncidentView, causes: Sequence[RootCause],
                diagnosis: ReasonerRun | None = None) -> tuple[list[Proposal], ReasonerRun]:
        """Proposals for `causes` from the same view diagnose saw; `diagnosis` (its run) says what of the
        incident's budget is spent and whether it found the provider's breaker open."""
        causes, topology = list(causes), view.topology
        prompt = self.prompts["propose"]
        if not causes or causes[0].entity not in topology:
            return [], ReasonerRun(reasoner=self.fallback.name, versions=self._versions(prompt, self._det_version()),
                                   notes=["the LLM was not asked: no root cause to act on"])
        deterministic = self.fallback.remedies(causes, topology, view.events)
        try:
            context = IncidentContext.gather(view.events, topology, causes, self.store, self.audit)
        except Exception as exc:  # a context we cannot build must not stop the incident
            log.exception("building the LLM context failed")
            return deterministic, self._fallback_run("propose", prompt, [], f"error: {exc}", "error")
        if not context.entities:
            context.entities = sorted({c.entity for c in causes})
        spent = diagnosis or ReasonerRun(reasoner=self.name)
        budget = IncidentBudget(self.budget_calls, self.budget_tokens, calls=spent.calls,
                                tokens=spent.tokens_in + spent.tokens_out)
        incident = _Incident(context, budget,
                             degraded=(spent.fallback or "").startswith("degraded mode"))
        top = [c.entity for c in causes[:RELATED_CAUSES]]
        related = topology.blast_radius(top)
        allowed = related & topology.blast_radius(context.entities) if context.entities else related

        def check(text: str) -> Checked:
            return check_proposals(text, self.proposal_validation, topology, self.contracts, related, top)

        schema = sent_proposal_schema(self.proposal_validation, self.contracts, topology, allowed, self.compact)
        messages, _, _ = fit(lambda d: prompt.render(**context.propose_vars(d, causes, self.contracts, allowed)),
                             self.context_tokens)
        try:
            answer, checked_notes = self._ask("propose", prompt, messages, schema, check, incident)
        except Exception as exc:
            if not isinstance(exc, LLMError):
                log.exception("the LLM proposal failed unexpectedly")
            return deterministic, self._fallback_run("propose", prompt, incident.calls, *self._why(exc, incident))
        proposals = self._proposals(answer, causes)
        metrics.record_decision("propose", "llm")
        return proposals, self._run(prompt, incident.calls, checked_notes)

    def _proposals(self, answer: dict[str, Any], causes: Sequence[RootCause]) -> list[Proposal]:
        cause = causes[0]
        proposals: list[Proposal] = []
        for action in answer["actions"][:MAX_PROPOSALS]:
            if any((p.type, p.target) == (action["type"], action["target"]) for p in proposals):
                continue
            proposals.append(Proposal(type=action["type"], target=action["target"], params=dict(action["params"]),
                                      reason=action["reason"][:400], cause=cause.entity,
                                      proposed_by=self.proposed_by))
        if not any(p.type == "notify_oncall" for p in proposals) and "notify_oncall" in self.contracts:
            summary = answer.get("summary", "").strip() or "no summary"
            planned = ", ".join(f"{p.type} {p.target}" for p in proposals) or "no automatic action"
            text = (f"Probable root cause: {cause.entity} ({cause.fault_type}, share {cause.share}). "
                    f"Proposed: {planned}. {summary}")
            proposals.append(Proposal(type="notify_oncall", target=cause.entity, params={"summary": text[:2000]},
                                      cause=cause.entity, proposed_by=self.proposed_by,
                                      reason="a person should know what was found and what is being done about it"))
        return proposals

    # -- one task's conversation ------------------------------------------------------------------

    def _ask(self, task: str, prompt: prompts.Prompt, messages: list[dict[str, str]], schema: dict[str, Any],
             check: Callable[[str], Checked], incident: _Incident) -> tuple[dict[str, Any], list[str]]:
        """Ask, validate, re-ask with the errors at most MAX_REASKS times; the valid answer and its notes."""
        conversation = list(messages)
        name = "diagnosis" if task == "diagnose" else "proposals"
        errors: list[str] = []
        tool_calls_left = self.tools.max_calls if self.tools is not None and incident.view is not None else 0
        attempt = 0
        while attempt <= MAX_REASKS:
            record = CallRecord(task, self.config.model, prompt.hash)
            incident.calls.append(record)
            try:
                incident.budget.reserve(estimate_tokens("".join(m["content"] or "" for m in conversation))
                                        + self.config.max_tokens)
            except BudgetExhausted as exc:
                incident.calls.pop()
                raise exc
            offered = [self.tools.spec(incident.view)] if tool_calls_left > 0 else None
            try:
                completion = self.client.complete(conversation, schema, name, tools=offered)
            except LLMError as exc:
                record.outcome, record.error = "error", str(exc)[:200]
                self._observe(record)
                raise
            incident.budget.charge(completion.tokens_in + completion.tokens_out)
            record.model = completion.model or record.model
            record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
            record.latency_s, record.attempts = completion.latency_s, completion.attempts
            record.cost_usd = self.config.cost(completion.tokens_in, completion.tokens_out)
            if offered and completion.tool_calls:  # the model asked for data first: answer, then ask again
                calls = completion.tool_calls[:tool_calls_left]
                tool_calls_left -= len(calls)
                record.outcome = "tool_call"
                self._observe(record)
                conversation += self._tool_round(calls, incident.view)
                continue
            attempt += 1
            checked = check(completion.text)
            if checked.ok:
                record.outcome = "valid"
                self._observe(record)
                return checked.value, checked.notes
            errors = checked.errors
            record.outcome = "re-asked" if attempt <= MAX_REASKS else "fallback"
            record.error = "; ".join(errors)[:300]
            self._observe(record)
            conversation += [{"role": "assistant", "content": completion.text[:4000]},
                             {"role": "user", "content": reask_message(errors)}]
        raise InvalidAnswer(errors)

    def _tool_round(self, calls: Sequence[ToolCall], view: IncidentView) -> list[dict[str, Any]]:
        """The assistant's tool calls and each one's result, as the next messages of the conversation."""
        asked = {"role": "assistant", "content": None, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]}
        return [asked] + [{"role": "tool", "tool_call_id": c.id, "content": self.tools.call(c, view)} for c in calls]

    def _observe(self, record: CallRecord) -> None:
        metrics.record_call(record.task, record.model, record.outcome, record.tokens_in, record.tokens_out,
                            record.latency_s, record.cost_usd)
        log.info(record.line())

    # -- runs and fallbacks -----------------------------------------------------------------------

    def _versions(self, prompt: prompts.Prompt, decided_by: str | None = None) -> dict[str, str]:
        versions = {"model": self.config.model, "prompt": prompt.version, "llm": self.config.provider}
        if decided_by:
            versions["reasoner"] = decided_by
        return versions

    def _det_version(self) -> str:
        return f"{self.fallback.name}/{self.fallback.version}"

    def _run(self, prompt: prompts.Prompt, calls: list[CallRecord], notes: list[str]) -> ReasonerRun:
        return ReasonerRun(reasoner=self.name, versions=self._versions(prompt, f"{self.name}/{self.version}"),
                           calls=len(calls), tokens_in=sum(c.tokens_in for c in calls),
                           tokens_out=sum(c.tokens_out for c in calls),
                           notes=[c.line() for c in calls] + notes + _cost_note(calls))

    def _fallback_run(self, task: str, prompt: prompts.Prompt, calls: list[CallRecord], reason: str, kind: str,
                      notes: Sequence[str] = ()) -> ReasonerRun:
        metrics.record_decision(task, "deterministic", kind)
        log.warning("%s: deterministic fallback: %s", task, reason)
        return ReasonerRun(
            reasoner=self.fallback.name, fallback=reason,
            versions=self._versions(prompt, self._det_version()),
            calls=len(calls), tokens_in=sum(c.tokens_in for c in calls),
            tokens_out=sum(c.tokens_out for c in calls),
            notes=[c.line() for c in calls] + list(notes) + _cost_note(calls))

    def _why(self, exc: Exception, incident: _Incident) -> tuple[str, str]:
        """The fallback's reason (for the audit log) and its kind (for metrics)."""
        if isinstance(exc, BreakerOpen):
            if not incident.degraded:  # count the incident once, whichever step found the breaker open
                metrics.DEGRADED.inc()
            incident.degraded = True
            return f"degraded mode: {exc}", "breaker_open"
        if isinstance(exc, InvalidAnswer):
            return str(exc), "invalid"
        if isinstance(exc, BudgetExhausted):
            return f"budget: {exc}", "budget"
        if isinstance(exc, ProviderRejected):
            return str(exc), "rejected"
        if isinstance(exc, LLMUnavailable):
            return f"the LLM provider is unavailable: {exc}", "unavailable"
        return f"error: {exc}", "error"

    def close(self) -> None:
        self.client.close()
        if self._on_close:
            self._on_close()


def _cost_note(calls: Sequence[CallRecord]) -> list[str]:
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return [f"estimated cost: ${sum(costs):.6f}"] if costs else []
