"""What can go wrong between rtem and an LLM provider, as the reasoner tells them apart.

`BreakerOpen` is the shared one from `bus`, re-exported here; the client raises it as `LLMBreakerOpen`.
"""

from __future__ import annotations

from bus import BreakerOpen


class LLMError(RuntimeError):
    """Base of the LLM reasoner's errors; each one ends in the deterministic fallback, never a crash."""


class LLMSetupError(LLMError):
    """The LLM reasoner cannot be built from the settings (missing extra, model file, base URL...).
    The message says what to install or set."""


class LLMUnavailable(LLMError):
    """The provider did not answer usefully: timeouts, 429/5xx after retries, connection errors."""


class ProviderRejected(LLMError):
    """The provider refused the request itself (a 4xx other than 408/409/429): retrying will not help,
    and it says nothing about the provider's health, so the breaker does not count it."""


class LLMBreakerOpen(BreakerOpen, LLMUnavailable):
    """The provider's circuit breaker (`bus.CircuitBreaker`) is open: the call was not made (degraded mode).
    The shared `BreakerOpen`, raised as one of the LLM reasoner's errors, so every LLMError handler sees it."""


class BudgetExhausted(LLMError):
    """The incident used up its budget of LLM calls or tokens."""
