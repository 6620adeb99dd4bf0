"""Read-only tools the LLM may call while it diagnoses: `query_prometheus(template, entity)`.

Only the query file's allowlisted templates run, rendered for an entity of the topology whose type the
template is for, over the incident's window, through the investigator's client and its bounds (step,
series, bytes, timeout, breaker). What the model gets back is a small summary (peak, threshold, a few
points per series), never raw data. Each call, refused ones included, is an `llm.tool_called` record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..audit import AuditLog
from ..investigate import Investigator
from ..models import IncidentView

TOOL = "query_prometheus"
TOOL_CALLED = "llm.tool_called"
POINTS_SHOWN = 12  # per series: enough to see a rise and when it began
SERIES_SHOWN = 5


@dataclass(frozen=True)
class ToolCall:
    """A call of one of the offered tools, as the model made it."""

    id: str
    name: str
    arguments: str


class PrometheusTool:
    """`query_prometheus` for the LLM reasoner: at most `max_calls` calls per incident."""

    def __init__(self, investigator: Investigator, audit: AuditLog, max_calls: int = 4):
        self.investigator = investigator
        self.audit = audit
        self.max_calls = max_calls

    def spec(self, view: IncidentView) -> dict[str, Any]:
        """The OpenAI function definition: templates as an enum, entities those of the topology."""
        names = sorted(self.investigator.queries.templates)
        described = "; ".join(f"{t.name}: {t.spec.description or t.spec.metric}"
                              for t in self.investigator.queries.templates.values())
        entities = sorted(e.id for e in view.topology.entities
                          if self.investigator.queries.for_type(e.type))[:200]
        return {"type": "function", "function": {
            "name": TOOL,
            "description": ("Read-only: run one allowlisted Prometheus query about one entity over the "
                            "incident's window and get its peak, threshold and a few points. A template "
                            f"applies to entities of its type (the part before the dot). Templates: {described}"),
            "parameters": {"type": "object", "additionalProperties": False, "required": ["template", "entity"],
                           "properties": {"template": {"type": "string", "enum": names},
                                          "entity": {"type": "string", "enum": entities}}}}}

    def call(self, call: ToolCall, view: IncidentView) -> str:
        """Run one call; the JSON text the model gets back (an error says what to do instead)."""
        answer, inputs = self._answer(call, view)
        self.audit.append(TOOL_CALLED, incident_id=view.incident_id, node="diagnose",
                          inputs={"tool": call.name, **inputs},
                          decision={k: v for k, v in answer.items() if k != "series"},
                          reasons=[answer.get("error") or f"{answer.get('series_count', 0)} series, "
                                   f"anomalous: {answer.get('anomalous')}"],
                          versions={"queries": self.investigator.queries.digest})
        return json.dumps(answer)

    def _answer(self, call: ToolCall, view: IncidentView) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return {"error": "the arguments are not a JSON object with template and entity"}, {"raw": call.arguments[:200]}
        name, entity = str(args.get("template", "")), str(args.get("entity", ""))
        inputs = {"template": name, "entity": entity}
        if call.name != TOOL:
            return {"error": f"there is no tool {call.name!r}; the only tool is {TOOL}"}, inputs
        template = self.investigator.queries.get(name)
        if template is None:
            return {"error": f"{name!r} is not an allowlisted template; use one of the enum"}, inputs
        if view.topology.entity_type(entity) != template.entity_type:
            return {"error": f"{name} applies to {template.entity_type} entities; {entity!r} is "
                             f"{view.topology.entity_type(entity) or 'not in the topology'}"}, inputs
        if not view.events:
            return {"error": "the incident has no events, so no window to query"}, inputs
        window = self.investigator.window(min(e.ts for e in view.events), max(e.ts for e in view.events),
                                          datetime.now(timezone.utc))
        if window is None:
            return {"error": "the incident's window lies after now: Prometheus has no data for it"}, inputs
        outcome, result = self.investigator.run(template, entity, view.topology, window)
        inputs["query"] = outcome.query
        if outcome.error:
            return {"error": outcome.error}, inputs
        spec = template.spec
        answer: dict[str, Any] = {
            "template": name, "entity": entity, "metric": spec.metric, "series_count": outcome.series,
            "truncated": outcome.truncated, "peak": outcome.peak, "threshold": spec.threshold,
            "anomalous_when": "above" if spec.direction == "up" else "below", "anomalous": outcome.anomalous,
            "series": [{"labels": s.labels, "points": [[round(ts), v] for ts, v in _thin(s.points)]}
                       for s in result.series[:SERIES_SHOWN]]}
        return answer, inputs


def _thin(points: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    if len(points) <= POINTS_SHOWN:
        return list(points)
    stride = len(points) / POINTS_SHOWN
    return [points[int(i * stride)] for i in range(POINTS_SHOWN - 1)] + [points[-1]]
