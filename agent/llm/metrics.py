"""Every Prometheus metric of the LLM reasoner, in one place (prometheus-client, default registry).

    rtem_llm_calls_total{task, model, outcome}         one per provider call; outcome: valid | re-asked |
                                                       fallback (the answer was unusable and the last try)
                                                       | error (no answer: timeout, 5xx, refused)
    rtem_llm_tokens_total{model, direction}            direction: in | out
    rtem_llm_call_seconds{task, model}                 latency of one call, retries included
    rtem_llm_cost_usd_total{model}                     only when prices are configured
    rtem_llm_decisions_total{task, decided_by}         decided_by: llm | deterministic
    rtem_llm_fallbacks_total{task, reason}             reason: invalid | unavailable | breaker_open |
                                                       budget | rejected | deadline | error
    rtem_llm_late_answers_total{task}                  answers that came after the incident's deadline
                                                       (diagnose: recorded as `reasoner.late`; propose: dropped)
    rtem_llm_dropped_jobs_total                        jobs whose deadline passed while they were queued
    rtem_llm_degraded_incidents_total                  incidents handled while the breaker was open
    rtem_llm_breaker_state{provider}                   0 closed, 1 half-open, 2 open
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from bus import CLOSED, HALF_OPEN, OPEN

CALLS = Counter("rtem_llm_calls", "LLM provider calls by outcome", ["task", "model", "outcome"])
TOKENS = Counter("rtem_llm_tokens", "LLM tokens sent (in) and received (out)", ["model", "direction"])
LATENCY = Histogram("rtem_llm_call_seconds", "Latency of one LLM call, retries included", ["task", "model"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120))
COST = Counter("rtem_llm_cost_usd", "Estimated LLM cost in US dollars (when prices are configured)", ["model"])
DECISIONS = Counter("rtem_llm_decisions", "Which reasoner decided a diagnosis or proposal",
                    ["task", "decided_by"])
FALLBACKS = Counter("rtem_llm_fallbacks", "Deterministic fallbacks, by reason", ["task", "reason"])
DEGRADED = Counter("rtem_llm_degraded_incidents", "Incidents handled in degraded mode (breaker open)")
LATE = Counter("rtem_llm_late_answers", "LLM answers that came after the incident's deadline", ["task"])
DROPPED = Counter("rtem_llm_dropped_jobs", "LLM jobs dropped unrun: their deadline passed in the queue")
BREAKER = Gauge("rtem_llm_breaker_state", "Circuit breaker on the LLM provider: 0 closed, 1 half-open, 2 open",
                ["provider"])

BREAKER_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def record_call(task: str, model: str, outcome: str, tokens_in: int, tokens_out: int, latency_s: float,
                cost_usd: float | None) -> None:
    CALLS.labels(task, model, outcome).inc()
    TOKENS.labels(model, "in").inc(tokens_in)
    TOKENS.labels(model, "out").inc(tokens_out)
    LATENCY.labels(task, model).observe(latency_s)
    if cost_usd:
        COST.labels(model).inc(cost_usd)


def record_decision(task: str, decided_by: str, fallback_kind: str | None = None) -> None:
    DECISIONS.labels(task, decided_by).inc()
    if fallback_kind:
        FALLBACKS.labels(task, fallback_kind).inc()


def record_breaker(provider: str, state: str) -> None:
    BREAKER.labels(provider).set(BREAKER_VALUES.get(state, 0))


@dataclass
class CallRecord:
    """Telemetry of one provider call, kept with the decision (`line()`) and exported as metrics."""

    task: str
    model: str
    prompt: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    outcome: str = "valid"  # valid | re-asked | fallback | tool_call | error
    attempts: int = 0
    cost_usd: float | None = None
    error: str = ""

    def line(self) -> str:
        cost = f", ~${self.cost_usd:.6f}" if self.cost_usd is not None else ""
        error = f": {self.error}" if self.error else ""
        return (f"{self.task} call: model {self.model}, prompt {self.prompt}, tokens {self.tokens_in} in / "
                f"{self.tokens_out} out, {self.latency_s:.2f} s, {self.attempts} attempt(s){cost}, "
                f"{self.outcome}{error}")
