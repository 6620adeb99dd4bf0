"""Investigation through Prometheus: allowlisted PromQL templates per entity type (`_queries`), a
bounded client (`_client`), evidence events from their results (`_investigator`) and how they are
recorded (`_record`). `build_investigator` makes one from settings, or None when RTEM_PROMETHEUS_URL
is unset (docs/integrations.md, Prometheus)."""

from __future__ import annotations

from bus import CircuitBreaker

from ._client import Bounds, PrometheusClient, PrometheusError, RangeResult, Series
from ._investigator import EVIDENCE_TYPE, Investigation, Investigator, QueryOutcome, Window, evidence
from ._queries import (DEFAULT_QUERIES, Aspect, QuerySet, QuerySpec, RenderError, Template, load_queries,
                       promql_escape, render)
from ._record import GATHERED, record


def build_investigator(settings) -> Investigator | None:
    """The investigator `settings` ask for (its query file checked now: a bad one stops start-up with
    its file:line:column), or None without RTEM_PROMETHEUS_URL."""
    if not settings.prometheus_url:
        return None
    queries = load_queries(settings.prometheus_queries)
    bounds = Bounds(timeout_s=settings.prometheus_timeout_s, max_points=settings.prometheus_max_points,
                    min_step_s=settings.prometheus_min_step_s, max_series=settings.prometheus_max_series)
    client = PrometheusClient(settings.prometheus_url, bounds, breaker=CircuitBreaker(
        f"prometheus {settings.prometheus_url}", threshold=3, cooldown_s=30.0))
    return Investigator(client, queries, lookback_s=settings.prometheus_lookback_s,
                        max_queries=settings.prometheus_max_queries, budget_s=settings.prometheus_budget_s)


__all__ = ["DEFAULT_QUERIES", "EVIDENCE_TYPE", "GATHERED", "Aspect", "Bounds", "Investigation", "Investigator",
           "PrometheusClient", "PrometheusError", "QueryOutcome", "QuerySet", "QuerySpec", "RangeResult",
           "RenderError", "Series", "Template", "Window", "build_investigator", "evidence", "load_queries",
           "promql_escape", "record", "render"]
