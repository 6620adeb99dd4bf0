"""What can go wrong between rtem and an LLM provider, as the reasoner tells them apart."""

from __future__ import annotations


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


class BreakerOpen(LLMUnavailable):
    """The provider's circuit breaker is open: the call was not made (degraded mode)."""

    def __init__(self, name: str, failures: int, retry_in_s: float):
        super().__init__(f"the circuit breaker on {name} is open after {failures} consecutive failures; "
                         f"next trial call in {max(0.0, retry_in_s):.1f} s")
        self.retry_in_s = retry_in_s


class BudgetExhausted(LLMError):
    """The incident used up its budget of LLM calls or tokens."""
