"""The LLM reasoner and client built from `Settings`: provider defaults, the client's config, its breaker.

The circuit breaker is made here, once per client, and handed to it: there is no process-wide registry.
A caller that wants two clients to share one (the reasoner and the chat of one service) passes it in.
"""

from __future__ import annotations

import dataclasses
import os

from bus import CircuitBreaker

from ._client import LLM_RETRY, LLMClient, LLMConfig
from ._errors import LLMSetupError
from ._local import LocalServer
from ._reasoner import LLMReasoner
from ._tools import PrometheusTool

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
# Per-provider defaults where a laptop model and a hosted one differ (settings left unset take these).
DEFAULTS = {"openai": {"timeout_s": 30.0, "context_tokens": 6000},
            "local": {"timeout_s": 180.0, "context_tokens": 2500}}


def build_reasoner(settings, *, contracts, store=None, breaker: CircuitBreaker | None = None,
                   tools: PrometheusTool | None = None, audit=None, guard=None) -> LLMReasoner:
    """The LLM reasoner `settings.llm` asks for (`openai` or `local`); for `local` it starts llama.cpp's
    server, which `reasoner.close()` stops. Raises LLMSetupError with what to install or set. `tools` are
    offered while diagnosing (not to `local`: llama.cpp's tool calls are unreliable). `audit` (the service's
    AuditLog) lets the context tell similar past incidents' confirmed causes and outcomes. `guard` (a callable
    giving the guard in force) holds the model's choice of actions to the rule files' remedy fitness too,
    not only the contracts'."""
    client, server = connect(settings, breaker=breaker)
    try:
        context_tokens = settings.llm_context_tokens or DEFAULTS[client.config.provider]["context_tokens"]
        return LLMReasoner(client, contracts=contracts, store=store, context_tokens=context_tokens,
                           budget_calls=settings.llm_incident_calls, budget_tokens=settings.llm_incident_tokens,
                           deadline_s=settings.llm_deadline_s, guard=guard,
                           on_close=server.stop if server else None,
                           tools=tools if client.config.provider != "local" else None, audit=audit)
    except BaseException:
        if server is not None:
            server.stop()
        raise


def connect(settings, *, breaker: CircuitBreaker | None = None) -> tuple[LLMClient, LocalServer | None]:
    """A client for the provider `settings.llm` names, on `breaker` or else a new one (`provider_breaker`).
    For `local`, llama.cpp's server is started first and returned too: the caller stops it when done."""
    server = None
    if settings.llm == "local":
        server = LocalServer(settings.local_model, ctx_size=settings.local_ctx_size)
        base_url = server.start()
    else:
        base_url = None
    try:
        config = llm_config(settings, base_url=base_url)
        return LLMClient(config, breaker or provider_breaker(settings, config)), server
    except BaseException:
        if server is not None:
            server.stop()
        raise


def provider_breaker(settings, config: LLMConfig) -> CircuitBreaker:
    """The circuit breaker on one provider, from `RTEM_LLM_BREAKER_*`, reported as `rtem_llm_breaker_state`."""
    from . import metrics

    breaker = CircuitBreaker(f"{config.provider} {config.base_url or 'api.openai.com'} ({config.model})",
                             settings.llm_breaker_failures, settings.llm_breaker_reset_s,
                             on_change=lambda _old, new: metrics.record_breaker(config.provider, new))
    metrics.record_breaker(config.provider, breaker.state)
    return breaker


def llm_config(settings, base_url: str | None = None) -> LLMConfig:
    """Provider settings resolved: RTEM_LLM_* first, then the SDK's OPENAI_* variables, then defaults."""
    provider = "local" if settings.llm == "local" else "openai"
    defaults = DEFAULTS[provider]
    retry = dataclasses.replace(LLM_RETRY, max_attempts=settings.llm_retry_attempts,
                                initial_interval_s=settings.llm_retry_initial_s)
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
