"""One client for any OpenAI-compatible chat-completions endpoint, on the official `openai` SDK.

It asks for structured output in one of two styles (a `json_schema` response format, or a forced tool
call whose parameters are the schema) and returns the answer's text with its usage. Around each request:
the concurrency limit, the provider's circuit breaker (made by whoever builds the client, `connect()`), the
SDK's timeout, and retries with backoff for 429/5xx/timeouts as the `bus.RetryPolicy` says. The SDK's own
retries are off, so the policy is the only one. Given an incident's `Deadline` (_lane.py), no attempt starts
after it, a backoff never sleeps past it, and each request's timeout ends by its cutoff; a request cut
there says nothing about the provider's health, so the breaker does not count it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bus import BreakerOpen, CircuitBreaker, RetryPolicy

from ._errors import LLMBreakerOpen, LLMUnavailable, ProviderRejected
from ._lane import Deadline, DeadlinePassed
from ._tools import ToolCall

OutputStyle = Literal["json_schema", "tools"]


# Statuses worth retrying, with every 5xx; any other 4xx is the request's fault (ProviderRejected).
RETRYABLE_STATUS = frozenset({408, 409, 429})
# The LLM calls' default policy: a `Retry-After` header is honoured up to `max_interval_s`.
LLM_RETRY = RetryPolicy(max_attempts=3, initial_interval_s=0.5, backoff=2.0, max_interval_s=8.0, jitter=0.2)


def retryable_status(status: int | None) -> bool:
    """Whether an HTTP status (None: no answer at all) is worth another try."""
    return status is None or status >= 500 or status in RETRYABLE_STATUS


@dataclass(frozen=True)
class LLMConfig:
    """Everything a call needs, resolved from Settings (and the SDK's OPENAI_* variables) once."""

    provider: str
    base_url: str | None
    api_key: str
    model: str
    timeout_s: float = 30.0
    temperature: float = 0.0
    seed: int | None = 7
    max_tokens: int = 1024
    output: OutputStyle = "json_schema"
    strict: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = LLM_RETRY
    max_concurrency: int = 4
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if self.price_in_per_mtok is None and self.price_out_per_mtok is None:
            return None
        return (tokens_in * (self.price_in_per_mtok or 0.0) + tokens_out * (self.price_out_per_mtok or 0.0)) / 1e6


@dataclass
class Completion:
    """One answered call: the answer's text (JSON, unparsed), usage and timing."""

    text: str
    model: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    attempts: int
    finish_reason: str | None = None
    tool_calls: list = field(default_factory=list)  # calls of offered tools other than the answer (_tools.ToolCall)


class LLMClient:
    def __init__(self, config: LLMConfig, breaker: CircuitBreaker):
        import openai  # imported here: the deterministic default never pays for it

        self.config = config
        self.breaker = breaker
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._sdk = openai.OpenAI(api_key=config.api_key, base_url=config.base_url, timeout=config.timeout_s,
                                  max_retries=0)

    def complete(self, messages: list[dict[str, Any]], schema: dict[str, Any], name: str,
                 tools: list[dict[str, Any]] | None = None, deadline: Deadline | None = None) -> Completion:
        """Ask for an answer matching `schema` (named `name`); raise LLMUnavailable, BreakerOpen or
        ProviderRejected when there is none, DeadlinePassed when `deadline` leaves no time for one. With
        `tools` (read-only function definitions) the model may call those instead of answering: the
        Completion's `tool_calls` then says which."""
        request = self._request(messages, schema, name, tools or [])
        started = time.perf_counter()
        wait = self.config.timeout_s if deadline is None else min(self.config.timeout_s, max(0.0, deadline.left()))
        if not self._slots.acquire(timeout=wait):
            if deadline is not None and deadline.passed():
                raise DeadlinePassed("the deadline passed while waiting for a free LLM call slot")
            raise LLMUnavailable(f"{self.config.max_concurrency} LLM calls already in flight for "
                                 f"{self.config.timeout_s:.0f} s (the concurrency limit)")
        try:
            response, attempts = self._send_retrying(request, deadline)
        finally:
            self._slots.release()
        text = _answer_text(response, self.config.output, name)
        usage = getattr(response, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", None) or estimate_tokens(
            " ".join(str(m.get("content", "")) for m in messages))
        tokens_out = getattr(usage, "completion_tokens", None) or estimate_tokens(text)
        choice = response.choices[0] if response.choices else None
        return Completion(text=text, model=getattr(response, "model", None) or self.config.model,
                          tokens_in=int(tokens_in), tokens_out=int(tokens_out),
                          latency_s=time.perf_counter() - started, attempts=attempts,
                          finish_reason=getattr(choice, "finish_reason", None),
                          tool_calls=_tool_calls(response, name))

    def close(self) -> None:
        self._sdk.close()

    # -- one HTTP request -------------------------------------------------------------------------

    def _request(self, messages, schema, name, tools: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        request: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                                   "max_tokens": cfg.max_tokens}
        if cfg.seed is not None:
            request["seed"] = cfg.seed
        if cfg.output == "tools":
            request["tools"] = [{"type": "function", "function": {
                "name": name, "description": f"Submit the {name}: one JSON object matching the parameters.",
                "parameters": schema, "strict": cfg.strict}}] + tools
            # With other tools on offer the model must call one of them or the answer (listed first).
            request["tool_choice"] = "required" if tools else {"type": "function", "function": {"name": name}}
        else:
            request["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": name, "schema": schema, "strict": cfg.strict}}
            if tools:
                request["tools"], request["tool_choice"] = tools, "auto"
        if cfg.extra_body:
            request["extra_body"] = dict(cfg.extra_body)
        return request

    def _send_retrying(self, request: dict[str, Any], deadline: Deadline | None = None):
        """The response and the attempts it took; an open breaker is never retried (nothing was sent), and
        a backoff is cut short at the deadline, after which the next attempt raises DeadlinePassed."""
        def sleep(seconds: float) -> None:
            time.sleep(seconds if deadline is None else max(0.0, min(seconds, deadline.left())))

        for attempt in self.config.retry.retrying((LLMUnavailable,), unless=lambda exc: isinstance(exc, BreakerOpen),
                                                  sleep=sleep):
            with attempt:
                return self._send(request, deadline), attempt.retry_state.attempt_number
        raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover

    def _send(self, request: dict[str, Any], deadline: Deadline | None = None):
        import openai

        timeout = self.config.timeout_s if deadline is None else deadline.call_timeout(self.config.timeout_s)
        if timeout <= 0:
            raise DeadlinePassed("the deadline passed: no new LLM call starts after it")
        cut = timeout < self.config.timeout_s  # the deadline, not the provider's timeout, bounds this request
        try:
            trial = self.breaker.before_call()
        except BreakerOpen as exc:
            raise LLMBreakerOpen(exc.name, exc.failures, exc.retry_in_s) from None
        try:
            sdk = self._sdk.with_options(timeout=timeout) if cut else self._sdk
            response = sdk.chat.completions.create(**request)
        except openai.APIStatusError as exc:
            if retryable_status(exc.status_code):
                self.breaker.failure()
                raise _Unavailable(f"{self.config.provider} answered HTTP {exc.status_code}: "
                                   f"{_status_message(exc)}", _retry_after(exc)) from exc
            self.breaker.release(trial)
            raise ProviderRejected(f"{self.config.provider} refused the request: HTTP {exc.status_code}: "
                                   f"{_status_message(exc)}") from exc
        except openai.APITimeoutError as exc:
            if cut:  # cut by the incident's deadline: no verdict on the provider
                self.breaker.release(trial)
                raise DeadlinePassed(f"{self.config.provider} did not answer by the deadline "
                                     f"(the request was cut after {timeout:.1f} s)") from exc
            self.breaker.failure()
            raise _Unavailable(f"{self.config.provider} did not answer within {self.config.timeout_s:g} s") from exc
        except openai.APIConnectionError as exc:
            self.breaker.failure()
            raise _Unavailable(f"cannot reach {self.config.provider} at {self.config.base_url or 'the default URL'}: "
                               f"{_short(str(exc))}") from exc
        except openai.OpenAIError as exc:  # a malformed response body, say
            self.breaker.failure()
            raise _Unavailable(f"{self.config.provider}: {_short(str(exc))}") from exc
        except BaseException:  # interrupted, or a bug: no verdict on the provider, but end the trial
            self.breaker.release(trial)
            raise
        if not getattr(response, "choices", None):
            self.breaker.failure()
            raise _Unavailable(f"{self.config.provider} answered without choices")
        self.breaker.success()
        return response


class _Unavailable(LLMUnavailable):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def estimate_tokens(text: str) -> int:
    """About three characters a token: English runs nearer four, but event ids and metric names tokenize
    worse, and an estimate for budgets must not fall short. Not a tokenizer."""
    return len(text) // 3 + 1


def _answer_text(response, output: OutputStyle, name: str) -> str:
    message = response.choices[0].message
    calls = getattr(message, "tool_calls", None) or []
    if output == "tools" and calls:
        answers = [c for c in calls if getattr(getattr(c, "function", None), "name", name) == name]
        return (getattr(answers[0].function, "arguments", "") or "") if answers else ""
    return message.content or ""


def _tool_calls(response, name: str) -> list:
    """The calls of tools other than the answer `name`, in the order the model made them."""
    calls = getattr(response.choices[0].message, "tool_calls", None) or []
    return [ToolCall(str(c.id), str(c.function.name), str(c.function.arguments or ""))
            for c in calls if getattr(getattr(c, "function", None), "name", name) != name]


def _retry_after(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _status_message(exc) -> str:
    """The provider's own error message (OpenAI-style `{"error": {"message": ...}}`), else the SDK's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    return _short(message or exc.message)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
