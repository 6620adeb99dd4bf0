"""LLM reasoning at the edge of rtem: any OpenAI-compatible model proposes, the guard disposes.

    reasoner = build_reasoner(settings, contracts=contracts, store=store)   # settings.llm: openai | local
    causes, run = reasoner.diagnose(view)   # view: IncidentView; run.fallback says why, if the LLM did not decide
    proposals, run = reasoner.propose(view, causes, run)   # gets what the diagnosis left of the deadline
    reply = LlmChat(settings).answer(question, store, audit, visible=may_see)   # chat.Answer, cited

The pieces: `LLMClient` (openai SDK, retries as a `bus.RetryPolicy`, the `bus.CircuitBreaker` it is given,
a concurrency limit, requests bounded by a `Deadline`), `Lane` (the few workers that run incidents' LLM
work earliest deadline first, dropping a job whose deadline passed in the queue), `IncidentContext` (what the
model sees, within a token budget, event text scrubbed), the answer checks and the combining rule,
`LocalServer` (llama.cpp's server for `--llm local`), `LlmChat` (operators' questions answered from
retrieved records; docs/operators.md) and `metrics` (Prometheus). Building them from settings is `_build`.
docs/llm.md describes configuration, the deadline, the combining rule and degraded mode.
"""

from __future__ import annotations

from bus import CLOSED, HALF_OPEN, OPEN, BreakerOpen, CircuitBreaker, RetryPolicy

from ._budget import IncidentBudget
from ._build import DEFAULT_OPENAI_MODEL, DEFAULTS, build_reasoner, connect, llm_config, provider_breaker
from ._chat import LlmChat
from ._client import LLM_RETRY, Completion, LLMClient, LLMConfig, estimate_tokens, retryable_status
from ._combine import LLM_WEIGHT, combine
from ._context import IncidentContext
from ._errors import BudgetExhausted, LLMBreakerOpen, LLMError, LLMSetupError, LLMUnavailable, ProviderRejected
from ._lane import Deadline, DeadlinePassed, Lane
from ._local import LocalServer, default_model, server_binary
from ._reasoner import MAX_REASKS, CallRecord, LLMReasoner
from ._schema import sent_diagnosis_schema, sent_proposal_schema, tighten, validation_proposal_schema
from ..redact import scrub, untrusted
from ._tools import TOOL_CALLED, PrometheusTool, ToolCall

__all__ = [
    "CLOSED", "DEFAULTS", "DEFAULT_OPENAI_MODEL", "HALF_OPEN", "LLM_RETRY", "LLM_WEIGHT", "MAX_REASKS", "OPEN",
    "BreakerOpen", "BudgetExhausted", "CallRecord", "CircuitBreaker", "Completion", "Deadline", "DeadlinePassed",
    "IncidentBudget", "IncidentContext", "LLMBreakerOpen", "Lane", "LLMClient", "LLMConfig", "LLMError", "LLMReasoner", "LLMSetupError",
    "LLMUnavailable", "LlmChat", "LocalServer", "PrometheusTool", "ProviderRejected", "RetryPolicy", "TOOL_CALLED",
    "ToolCall", "build_reasoner", "combine",
    "connect", "default_model", "estimate_tokens", "llm_config", "provider_breaker", "retryable_status", "scrub",
    "sent_diagnosis_schema", "sent_proposal_schema", "server_binary", "tighten", "untrusted",
    "validation_proposal_schema",
]
