"""Investigation: run the allowlisted queries about an incident's entities over its window, and turn
anomalous results into evidence events the reasoners weigh.

An anomalous series becomes one `rtem.metric.anomaly` event about the entity, dated at the first
point beyond the threshold, with the metric name, its peak, the threshold and direction, and a
`source` that links to the query in Prometheus. The deterministic reasoner reads such events like any
other metric anomaly (agent/reasoner/_signals.py). Nothing here writes: `record` (the graph's edge)
stores the events and the `context.gathered` decision record.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from bus import Event
from rules import Topology

from ._client import PrometheusClient, PrometheusError, RangeResult, Series
from ._queries import QuerySet, RenderError, Template, render

EVIDENCE_TYPE = "rtem.metric.anomaly"


@dataclass(frozen=True)
class Window:
    start: float
    end: float


@dataclass(frozen=True)
class QueryOutcome:
    """What one query gave: how many series, the most extreme value, whether it was anomalous, or why
    it did not run."""

    template: str
    entity: str
    query: str
    series: int = 0
    truncated: bool = False
    peak: float | None = None
    anomalous: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Investigation:
    incident_id: str
    window: Window | None
    outcomes: list[QueryOutcome] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why some queries did not run at all

    @property
    def failures(self) -> list[QueryOutcome]:
        return [o for o in self.outcomes if o.error]


class Investigator:
    """Runs a `QuerySet` against one Prometheus, within bounds: at most `max_queries` queries and
    `budget_s` seconds per incident, over [first event − `lookback_s`, last event] (never past now)."""

    def __init__(self, client: PrometheusClient, queries: QuerySet, *, lookback_s: float = 120.0,
                 max_queries: int = 60, budget_s: float = 20.0, monotonic: Callable[[], float] = time.monotonic):
        self.client = client
        self.queries = queries
        self.lookback_s = lookback_s
        self.max_queries = max_queries
        self.budget_s = budget_s
        self._monotonic = monotonic

    @property
    def url(self) -> str:
        return self.client.base_url

    def window(self, first_ts: float, last_ts: float, now: datetime) -> Window | None:
        """The incident's window as Prometheus can answer it: None when it lies wholly in the future
        (event time ahead of the wall clock, as in a sped-up demo)."""
        end = min(last_ts, now.timestamp())
        start = first_ts - self.lookback_s
        return Window(start, max(end, start + 1.0)) if start < now.timestamp() else None

    def investigate(self, incident_id: str, entities: Iterable[str], first_ts: float, last_ts: float,
                    topology: Topology, now: datetime) -> Investigation:
        window = self.window(first_ts, last_ts, now)
        if window is None:
            return Investigation(incident_id, None, skipped=[
                f"the incident's window starts after now ({now.isoformat()}): Prometheus has no data for it"])
        plan = self.plan(entities, topology)
        skipped = [f"{len(plan) - self.max_queries} queries over the limit of {self.max_queries} were not run"] \
            if len(plan) > self.max_queries else []
        outcomes, events = [], []
        deadline = self._monotonic() + self.budget_s
        for template, entity in plan[:self.max_queries]:
            if self._monotonic() > deadline:
                skipped.append(f"the {self.budget_s:g} s budget ran out after {len(outcomes)} queries")
                break
            outcome, result = self.run(template, entity, topology, window)
            outcomes.append(outcome)
            if result is not None:
                events.extend(evidence(incident_id, template, entity, result, self.url))
        return Investigation(incident_id, window, outcomes, events, skipped)

    def plan(self, entities: Iterable[str], topology: Topology) -> list[tuple[Template, str]]:
        """(template, entity) pairs, nearest first: the incident's entities; what their services call and
        use, and its instances (where a cause hides that pushed no event); their services' other
        instances; the hosts they run on. Each entity once, in a stable order."""
        own = [e for e in dict.fromkeys(entities) if e in topology]
        services = sorted({topology.service_of(e) for e in own})
        deps = sorted({d for s in services for rel in ("calls", "uses") for d in topology.targets(s, rel)})
        dep_instances = sorted({i for d in deps for i in topology.instances(d)})
        members = sorted({i for s in services for i in topology.instances(s)} | set(services))
        hosts = sorted({h for e in own + dep_instances + members if (h := topology.host_of(e))})
        ordered = dict.fromkeys(own + deps + dep_instances + members + hosts)
        return [(t, e) for e in ordered for t in self.queries.for_type(topology.entity_type(e))]

    def run(self, template: Template, entity: str, topology: Topology,
            window: Window) -> tuple[QueryOutcome, RangeResult | None]:
        """One allowlisted query for one entity; errors become the outcome's `error`, never an exception."""
        try:
            query = render(template, entity, topology)
        except RenderError as exc:
            return QueryOutcome(template.name, entity, template.spec.query, error=str(exc)), None
        try:
            result = self.client.query_range(query, window.start, window.end)
        except PrometheusError as exc:
            return QueryOutcome(template.name, entity, query, error=str(exc)), None
        peaks = [peak(s, template) for s in result.series if s.points]
        top = (max(peaks) if template.spec.direction == "up" else min(peaks)) if peaks else None
        anomalous = any(template.spec.anomalous(v) for s in result.series for _, v in s.points)
        return QueryOutcome(template.name, entity, query, len(result.series), result.truncated, top, anomalous), result

    def close(self) -> None:
        self.client.close()


def peak(series: Series, template: Template) -> float:
    values = [v for _, v in series.points]
    return max(values) if template.spec.direction == "up" else min(values)


def evidence(incident_id: str, template: Template, entity: str, result: RangeResult, prometheus: str) -> list[Event]:
    """One anomaly event per series that crossed the template's threshold, dated at its first crossing."""
    spec = template.spec
    events = []
    for series in result.series:
        crossing = next(((ts, v) for ts, v in series.points if spec.anomalous(v)), None)
        if crossing is None:
            continue
        top = peak(series, template)
        labels = ",".join(f"{k}={v}" for k, v in sorted(series.labels.items()))
        key = hashlib.sha256(f"{incident_id}|{template.name}|{entity}|{labels}".encode()).hexdigest()[:16]
        word = "above" if spec.direction == "up" else "below"
        events.append(Event(
            id=f"prometheus-{key}", source=f"{prometheus}/graph?g0.expr={quote(result.query, safe='')}",
            type=EVIDENCE_TYPE, time=datetime.fromtimestamp(crossing[0], timezone.utc), subject=entity,
            severity=spec.severity,
            message=f"{spec.metric} = {top:g} on {entity}, {word} {spec.threshold:g} (Prometheus, {template.name})",
            attributes={"metric": spec.metric, "direction": spec.direction, "value": top,
                        "first_value": crossing[1], "threshold": spec.threshold, "query": result.query,
                        "template": template.name, "series": series.labels, "evidence": "prometheus"}))
    return events
