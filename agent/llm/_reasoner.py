"""The LLM reasoner: hypotheses and proposals from an OpenAI-compatible model, with the deterministic
reasoner as its evidence base and its fallback.

    diagnose   deterministic candidates → context (token budget) → diagnose prompt → validated answer
               (re-asked with the errors at most twice) → combined with the evidence (see _combine)
    propose    the diagnosis's context → propose prompt → validated actions, proposed_by "llm:<model>"

Either step falls back to the deterministic answer, recording why in `ReasonerRun.fallback`: an answer
still invalid after two re-asks, the provider unavailable (timeouts, 429/5xx after retries), its breaker
open (degraded mode), the incident's budget of calls or tokens used up, a refused request, or the
incident's deadline. Nothing the LLM says reaches an executor without the graph's guard judging it like
any other proposal.

The deadline (`deadline_s` of wall time) spans both steps: the model's conversation runs as a job in the
fair lane (_lane.py), the step waits for it at most until the deadline, and propose gets only what the
diagnosis left (`ReasonerRun.llm_seconds`). A diagnosis that still arrives after its deadline becomes a
`reasoner.late` record for people to read; late proposals are dropped (_late.py). Neither changes the
decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import prompts
from agent.models import IncidentView, ReasonerRun, RootCause
from agent.fitness import fit_remedies
from agent.reasoner import DeterministicReasoner
from rules import ActionContract, Guard, Proposal, Ruleset
from rules.topology import described_by

from . import metrics
from ._budget import IncidentBudget
from ._client import LLMClient, estimate_tokens
from ._combine import combine, proposals_from
from ._context import IncidentContext, fit
from ._errors import BreakerOpen, BudgetExhausted, LLMError, LLMUnavailable, ProviderRejected
from ._lane import Deadline, DeadlinePassed, Lane, missed
from ._late import late_diagnosis, late_proposals
from ._tools import PrometheusTool, ToolCall
from ._schema import sent_diagnosis_schema, sent_proposal_schema, validation_proposal_schema
from ._validate import Checked, check_diagnosis, check_proposals, reask_message
from .metrics import CallRecord

log = logging.getLogger("rtem.llm")

MAX_REASKS = 2  # a broken answer is re-asked at most twice, then the deterministic answer is used
RELATED_CAUSES = 3  # proposals may act on the top three causes and their neighbours
MIN_STEP_S = 0.05  # less left of the deadline than this: no call could be answered, so none is made


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
    given_s: float = 0.0  # the seconds of the incident's deadline this step was given
    spent_s: float = 0.0  # what earlier steps of the incident used of its deadline
    started: float = field(default_factory=time.monotonic)
    deadline: Deadline = field(init=False)  # when the step's LLM part must be done: given_s after it started

    def __post_init__(self) -> None:
        self.deadline = Deadline.after(self.given_s, now=self.started)

    def used_s(self) -> float:
        """The incident's deadline used so far: earlier steps' and this one's."""
        return round(self.spent_s + max(0.0, time.monotonic() - self.started), 3)


class LLMReasoner:
    """Implements the graph's Reasoner protocol; returns `(answer, ReasonerRun)` pairs."""

    name = "llm"
    version = "llm-1"

    def __init__(self, client: LLMClient, *, contracts: Mapping[str, ActionContract], store=None,
                 fallback: DeterministicReasoner | None = None, context_tokens: int = 6000,
                 budget_calls: int = 6, budget_tokens: int = 60000, on_close: Callable[[], None] | None = None,
                 tools: PrometheusTool | None = None, audit=None, deadline_s: float = 10.0, lane: Lane | None = None,
                 guard: Callable[[], Guard] | None = None):
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
        self.guard = guard  # the rules in force (remedy fitness), read at each use: they may be reloaded
        self._own_guard: Guard | None = None
        self.deadline_s = deadline_s  # wall seconds of LLM work per incident, both steps and the queue included
        # llama.cpp's server answers one request at a time: more workers would only queue there, unseen.
        self.lane = lane or Lane(1 if self.compact else self.config.max_concurrency)

    @property
    def versions(self) -> dict[str, str]:
        """What build() records as the service's model and prompt versions."""
        return {"model": self.config.model, "llm": self.config.provider,
                "prompt": ",".join(p.version for p in self.prompts.values())}

    # -- diagnose ---------------------------------------------------------------------------------

    def diagnose(self, view: IncidentView, limit: int = 5) -> tuple[list[RootCause], ReasonerRun]:
        """The view's history (the background learned from earlier incidents) goes to the deterministic scoring."""
        # The instances the topology lacks whose events say their service are candidates the model may name.
        events, described = view.events, described_by(view.events, view.topology)
        topology = view.topology.with_instances(described)
        candidates = self.fallback.rank(events, topology, max(limit, len(topology.entities)), history=view.history,
                                         learned=view.learned)
        prompt = self.prompts["diagnose"]
        try:
            context = IncidentContext.gather(events, topology, candidates, self.store, self.audit, described)
        except Exception as exc:  # a context we cannot build must not stop the incident
            log.exception("building the LLM context failed")
            return candidates[:limit], self._fallback_run("diagnose", prompt, None, f"error: {exc}", "error")
        incident = _Incident(context, IncidentBudget(self.budget_calls, self.budget_tokens), view=view,
                             given_s=self.deadline_s)
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
            late = late_diagnosis(view.incident_id, self.deadline_s, self.audit, self._versions(prompt))
            answer, checked_notes = self.lane.run(
                lambda: self._ask("diagnose", prompt, messages, schema, check, incident), incident.deadline,
                label=f"diagnose {view.incident_id}", on_late=late)
        except Exception as exc:  # LLMError, or anything unforeseen: the deterministic answer is always there
            if not isinstance(exc, LLMError):
                log.exception("the LLM diagnosis failed unexpectedly")
            return candidates[:limit], self._fallback_run("diagnose", prompt, incident, *self._why(exc, incident),
                                                          notes=notes)
        supported = self.fallback.fault_kinds(events, topology)
        causes, combine_notes = combine(candidates, answer["hypotheses"], limit, supported=supported)
        metrics.record_decision("diagnose", "llm")
        summary = answer.get("summary", "").strip()
        return causes, self._run(prompt, incident, notes + checked_notes + combine_notes
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
            return deterministic, self._fallback_run("propose", prompt, None, f"error: {exc}", "error")
        if not context.entities:
            context.entities = sorted({c.entity for c in causes})
        spent = diagnosis or ReasonerRun(reasoner=self.name)
        budget = IncidentBudget(self.budget_calls, self.budget_tokens, calls=spent.calls,
                                tokens=spent.tokens_in + spent.tokens_out)
        left = self.deadline_s - spent.llm_seconds  # the deadline is the incident's: propose gets the rest
        if left < MIN_STEP_S:
            left = 0.0
        incident = _Incident(context, budget, degraded=(spent.fallback or "").startswith("degraded mode"),
                             given_s=left, spent_s=spent.llm_seconds)
        if left <= 0:
            return deterministic, self._fallback_run("propose", prompt, incident, *self._why(
                DeadlinePassed("the model was not asked"), incident))
        top = [c.entity for c in causes[:RELATED_CAUSES]]
        related = topology.blast_radius(top)
        allowed = related & topology.blast_radius(context.entities) if context.entities else related

        def check(text: str) -> Checked:
            return check_proposals(text, self.proposal_validation, topology, self.contracts, related, top)

        # The model chooses among the remedies that fit the diagnosis (what else it says is replaced later).
        fitting = fit_remedies(self._guard(), causes, view, allowed)
        schema = sent_proposal_schema(self.proposal_validation, self.contracts, topology, allowed, self.compact,
                                      fits=None if fitting is None else lambda a, t: t in fitting.get(a, ()))
        messages, _, _ = fit(lambda d: prompt.render(**context.propose_vars(d, causes, self.contracts, allowed,
                                                                           fitting)), self.context_tokens)
        try:
            answer, checked_notes = self.lane.run(
                lambda: self._ask("propose", prompt, messages, schema, check, incident), incident.deadline,
                label=f"propose {view.incident_id}", on_late=late_proposals(view.incident_id))
        except Exception as exc:
            if not isinstance(exc, LLMError):
                log.exception("the LLM proposal failed unexpectedly")
            return deterministic, self._fallback_run("propose", prompt, incident, *self._why(exc, incident))
        proposals = proposals_from(answer, causes, self.proposed_by, notify="notify_oncall" in self.contracts)
        metrics.record_decision("propose", "llm")
        return proposals, self._run(prompt, incident, checked_notes)

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
            if incident.deadline.passed():
                raise DeadlinePassed("no new LLM call starts after the deadline")
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
                completion = self.client.complete(conversation, schema, name, tools=offered,
                                                  deadline=incident.deadline)
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

    def _run(self, prompt: prompts.Prompt, incident: _Incident, notes: list[str]) -> ReasonerRun:
        calls = list(incident.calls)
        return ReasonerRun(reasoner=self.name, versions=self._versions(prompt, f"{self.name}/{self.version}"),
                           calls=len(calls), tokens_in=sum(c.tokens_in for c in calls),
                           tokens_out=sum(c.tokens_out for c in calls), llm_seconds=incident.used_s(),
                           notes=[c.line() for c in calls] + notes + _cost_note(calls))

    def _fallback_run(self, task: str, prompt: prompts.Prompt, incident: _Incident | None, reason: str, kind: str,
                      notes: Sequence[str] = ()) -> ReasonerRun:
        """The deterministic answer's run; `incident` None: the LLM was never asked (no calls, no time)."""
        metrics.record_decision(task, "deterministic", kind)
        log.warning("%s: deterministic fallback: %s", task, reason)
        calls = list(incident.calls) if incident is not None else []  # a late job may still append to its list
        return ReasonerRun(
            reasoner=self.fallback.name, fallback=reason,
            versions=self._versions(prompt, self._det_version()),
            calls=len(calls), tokens_in=sum(c.tokens_in for c in calls),
            tokens_out=sum(c.tokens_out for c in calls),
            llm_seconds=incident.used_s() if incident is not None else 0.0,
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
        if isinstance(exc, DeadlinePassed):
            return missed(incident.given_s, self.deadline_s, str(exc)), "deadline"
        if isinstance(exc, BudgetExhausted):
            return f"budget: {exc}", "budget"
        if isinstance(exc, ProviderRejected):
            return str(exc), "rejected"
        if isinstance(exc, LLMUnavailable):
            return f"the LLM provider is unavailable: {exc}", "unavailable"
        return f"error: {exc}", "error"

    def _guard(self) -> Guard:
        """The guard whose remedy fitness the model's choices are held to: the rules in force when given,
        else one from the contracts alone (built on first use)."""
        if self.guard is not None:
            return self.guard()
        if self._own_guard is None:
            self._own_guard = Guard(Ruleset(digest="contracts"), self.contracts)
        return self._own_guard

    def close(self) -> None:
        if self._own_guard is not None:
            self._own_guard.close()
        self.lane.close()
        self.client.close()
        if self._on_close:
            self._on_close()


def _cost_note(calls: Sequence[CallRecord]) -> list[str]:
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return [f"estimated cost: ${sum(costs):.6f}"] if costs else []
