"""LLM reasoning at the edge of rtem: any OpenAI-compatible model proposes, the guard disposes.

    reasoner = build_reasoner(settings, contracts=contracts, store=store)   # settings.llm: openai | local
    causes, run = reasoner.diagnose(events, topology)   # run.fallback says why, if the LLM did not decide
    proposals, run = reasoner.propose(causes, topology)
    reply = LlmChat(settings).answer(question, store, audit, visible=may_see)   # chat.Answer, cited

The pieces: `LLMClient` (openai SDK, retries as a `RetryPolicy`, a `CircuitBreaker` per provider, a
concurrency limit), `IncidentContext` (what the model sees, within a token budget, event text scrubbed),
the answer checks and the combining rule, `LocalServer` (llama.cpp's server for `--llm local`), `LlmChat`
(operators' questions answered from retrieved records; docs/operators.md) and `metrics` (Prometheus).
docs/llm.md describes configuration, the combining rule and degraded mode.
"""

from __future__ import annotations

import os

from ._breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker, breaker_for
from ._budget import IncidentBudget
from ._chat import LlmChat
from ._client import Completion, LLMClient, LLMConfig, RetryPolicy, estimate_tokens
from ._combine import LLM_WEIGHT, combine
from ._context import IncidentContext
from ._errors import BreakerOpen, BudgetExhausted, LLMError, LLMSetupError, LLMUnavailable, ProviderRejected
from ._local import LocalServer, default_model, server_binary
from ._reasoner import MAX_REASKS, CallRecord, LLMReasoner
from ._schema import sent_diagnosis_schema, sent_proposal_schema, tighten, validation_proposal_schema
from ._scrub import scrub, untrusted

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
# Per-provider defaults where a laptop model and a hosted one differ (settings left unset take these).
DEFAULTS = {"openai": {"timeout_s": 30.0, "context_tokens": 6000},
            "local": {"timeout_s": 180.0, "context_tokens": 2500}}

__all__ = [
    "CLOSED", "DEFAULTS", "DEFAULT_OPENAI_MODEL", "HALF_OPEN", "LLM_WEIGHT", "MAX_REASKS", "OPEN", "BreakerOpen",
    "BreakerPolicy", "BudgetExhausted", "CallRecord", "CircuitBreaker", "Completion", "IncidentBudget",
    "IncidentContext", "LLMClient", "LLMConfig", "LLMError", "LLMReasoner", "LLMSetupError", "LLMUnavailable",
    "LlmChat", "LocalServer", "ProviderRejected", "RetryPolicy", "breaker_for", "build_reasoner", "combine",
    "connect", "default_model", "estimate_tokens", "llm_config", "scrub", "sent_diagnosis_schema",
    "sent_proposal_schema", "server_binary", "tighten", "untrusted", "validation_proposal_schema",
]


def build_reasoner(settings, *, contracts, store=None) -> LLMReasoner:
    """The LLM reasoner `settings.llm` asks for (`openai` or `local`); for `local` it starts llama.cpp's
    server, which `reasoner.close()` stops. Raises LLMSetupError with what to install or set."""
    client, server = connect(settings)
    try:
        context_tokens = settings.llm_context_tokens or DEFAULTS[client.config.provider]["context_tokens"]
        return LLMReasoner(client, contracts=contracts, store=store, context_tokens=context_tokens,
                           budget_calls=settings.llm_incident_calls, budget_tokens=settings.llm_incident_tokens,
                           on_close=server.stop if server else None)
    except BaseException:
        if server is not None:
            server.stop()
        raise


def connect(settings) -> tuple[LLMClient, LocalServer | None]:
    """A client for the provider `settings.llm` names, on that provider's process-wide breaker. For
    `local`, llama.cpp's server is started first and returned too: the caller stops it when done."""
    from . import metrics

    server = None
    if settings.llm == "local":
        server = LocalServer(settings.local_model, ctx_size=settings.local_ctx_size)
        base_url = server.start()
    else:
        base_url = None
    try:
        config = llm_config(settings, base_url=base_url)
        policy = BreakerPolicy(settings.llm_breaker_failures, settings.llm_breaker_reset_s)
        label = f"{config.provider} {config.base_url or 'api.openai.com'} ({config.model})"
        breaker = breaker_for((config.provider, config.base_url, config.model), label, policy,
                              on_change=lambda _old, new: metrics.record_breaker(config.provider, new))
        metrics.record_breaker(config.provider, breaker.state)
        return LLMClient(config, breaker), server
    except BaseException:
        if server is not None:
            server.stop()
        raise


def llm_config(settings, base_url: str | None = None) -> LLMConfig:
    """Provider settings resolved: RTEM_LLM_* first, then the SDK's OPENAI_* variables, then defaults."""
    provider = "local" if settings.llm == "local" else "openai"
    defaults = DEFAULTS[provider]
    retry = RetryPolicy(max_attempts=settings.llm_retry_attempts, initial_interval_s=settings.llm_retry_initial_s)
    common = dict(timeout_s=settings.llm_timeout_s or defaults["timeout_s"], temperature=settings.llm_temperature,
                  seed=settings.llm_seed, max_tokens=settings.llm_max_tokens, retry=retry,
                  max_concurrency=settings.llm_max_concurrency, price_in_per_mtok=settings.llm_price_in,
                  price_out_per_mtok=settings.llm_price_out)
    if provider == "local":
        # llama.cpp honours json_schema by grammar; its tool calls are unreliable. cache_prompt off and a
        # fixed seed make an answer reproducible.
        return LLMConfig(provider="local", base_url=base_url, api_key="sk-local-no-key",
                         model=settings.llm_model or "local", output="json_schema", strict=False,
                         extra_body={"cache_prompt": False}, **common)
    base_url = base_url or settings.llm_base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else os.environ.get("OPENAI_API_KEY")
    if not key:
        if not base_url:
            raise LLMSetupError("--llm openai needs an API key: set RTEM_LLM_API_KEY or OPENAI_API_KEY (or "
                                "RTEM_LLM_BASE_URL for a server that needs none, such as vLLM or Ollama)")
        key = "sk-no-key"  # self-hosted servers ignore it, but the SDK wants one
    model = settings.llm_model or os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
    return LLMConfig(provider="openai", base_url=base_url, api_key=key, model=model, output=settings.llm_output,
                     strict=settings.llm_strict, **common)
