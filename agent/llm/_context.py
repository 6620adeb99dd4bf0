"""What the LLM is shown about an incident, bounded by a token budget.

`IncidentContext.gather` collects it once per incident: the events condensed (grouped by entity, type and
kind: counts, first and last time, a few samples), the topology around the incident, recent changes, the
deterministic reasoner's ranked candidates with their evidence, similar past incidents with their confirmed
causes and outcomes as they stood when this incident opened (`_past.py`), and the action catalog from the loaded contracts. `diagnose_vars` / `propose_vars` turn it into template
variables at a detail level; `fit` picks the most detailed level whose rendered prompt fits the budget.

Every string that came from an event goes through `untrusted` / `untrusted_word` (scrubbed, truncated,
unable to close its quotes); the templates keep it between the untrusted-data markers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.models import RootCause
from agent.store import IncidentRepository, event_from_row
from bus import Event
from rules import ActionContract, Topology
from rules.topology_check import events_coverage

from ._client import estimate_tokens
from ._past import PastIncident, similar_past
from ..reasoner._catalog import log_template
from ..reasoner._signals import statement
from ..redact import scrub, scrub_attributes, untrusted, untrusted_word

SEVERITY_ORDER = {"critical": 3, "error": 2, "warning": 1, "info": 0}
CHANGE_TYPES = ("rtem.change.deploy", "rtem.change.config")
CHANGE_LOOKBACK_S = 3600.0  # a change this long before the incident's first event still counts as recent


@dataclass(frozen=True)
class Detail:
    """How much of the context one rendering shows."""

    groups: int
    samples: int
    candidates: int
    relations: int
    past: int
    sample_chars: int


# From most to least detailed; `fit` takes the first level whose prompt fits the token budget. Past
# incidents come most similar first, so a level that shows fewer drops the least similar (then the oldest).
LEVELS = (
    Detail(groups=40, samples=2, candidates=10, relations=60, past=3, sample_chars=200),
    Detail(groups=25, samples=1, candidates=8, relations=40, past=2, sample_chars=160),
    Detail(groups=15, samples=1, candidates=6, relations=20, past=1, sample_chars=120),
    Detail(groups=8, samples=0, candidates=5, relations=10, past=0, sample_chars=100),
    Detail(groups=4, samples=0, candidates=3, relations=0, past=0, sample_chars=80),
)


@dataclass
class IncidentContext:
    incident_id: str
    severity: str
    entities: list[str]
    events: list[Event]
    candidates: list[RootCause]
    topology: Topology
    groups: list[dict[str, Any]] = field(default_factory=list)
    changes: list[Event] = field(default_factory=list)
    past: list[PastIncident] = field(default_factory=list)
    # calls the incident's traces show that the topology does not list, as the deterministic reasoner reads
    # them too (a topology may be an inventory without calls): read once, rendered at every detail level
    traced_calls: list[tuple[str, str]] = field(default_factory=list)
    placed: dict[str, str] = field(default_factory=dict)  # entity → host, as only the events' host.name says
    # entity → its service, for the instances only the events' service.name makes (`rules.topology.described_by`)
    described: dict[str, str] = field(default_factory=dict)

    @property
    def event_ids(self) -> set[str]:
        return {e.id for e in self.events}

    @property
    def admissible(self) -> set[str]:
        """Entities with evidence in this incident: the only ones an LLM hypothesis may name."""
        return {c.entity for c in self.candidates}

    @classmethod
    def gather(cls, events: Sequence[Event], topology: Topology, candidates: Sequence[RootCause],
               store: IncidentRepository | None = None, audit=None,
               described: Mapping[str, str] | None = None) -> IncidentContext:
        """`audit` (an AuditLog) dates what was known of past incidents; without it they come without
        outcomes. `described`: the instances `topology` holds only because the events name their service
        (it was grown by `Topology.with_instances`), marked as the events' word in the neighbourhood."""
        events = sorted(events, key=lambda e: (e.ts, e.id))
        row = _incident_row(store, events)
        if row is not None:
            incident_id, severity, entities = row["id"], row["severity"], list(row["entities"])
        else:
            incident_id = "inc-" + hashlib.sha256("".join(e.id for e in events).encode()).hexdigest()[:12]
            severity = max((e.severity for e in events), key=lambda s: SEVERITY_ORDER.get(s, 0), default="warning")
            entities = sorted({e.subject for e in events if e.subject in topology})
        context = cls(incident_id, severity, entities, list(events), list(candidates), topology)
        context.groups = _condense(events, topology, {c.entity: i for i, c in enumerate(candidates)})
        context.changes = _recent_changes(store, events, topology, entities)
        first_ts = events[0].ts if events else 0.0
        context.past = similar_past(store, audit, incident_id, entities, first_ts, topology.service_of)
        coverage = events_coverage(topology, events)
        context.traced_calls, context.placed = list(coverage.unlisted_calls), dict(coverage.placed)
        context.described = dict(described or {})
        return context

    # -- template variables -----------------------------------------------------------------------

    def diagnose_vars(self, detail: Detail) -> dict[str, Any]:
        return {
            "incident": self._incident(),
            "candidates": [_candidate(i + 1, c, self.topology) for i, c in enumerate(self.candidates[:detail.candidates])],
            "neighbourhood": self._neighbourhood(detail.relations),
            "past": [p.prompt_vars() for p in self.past[:detail.past]],
            "changes": [{"time": _hms(e.ts), "type": e.type, "entity": untrusted_word(e.subject),
                         "text": untrusted(e.message, detail.sample_chars)} for e in self.changes[:10]],
            **self._groups(detail),
        }

    def propose_vars(self, detail: Detail, causes: Sequence[RootCause], contracts: Mapping[str, ActionContract],
                     allowed: set[str], fitting: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        """`fitting`: action -> the targets on which it remedies the diagnosed cause (remedy fitness)."""
        targets = sorted(allowed)
        return {
            "fit": [{"action": a, "targets": ts[:20]} for a, ts in sorted((fitting or {}).items())],
            "incident": self._incident(),
            "causes": [_candidate(i + 1, c, self.topology) for i, c in enumerate(causes[:max(3, detail.candidates // 2)])],
            "targets": targets[:80] + ([f"... {len(targets) - 80} more"] if len(targets) > 80 else []),
            "catalog": catalog(contracts),
            "past": [p.prompt_vars() for p in self.past[:detail.past]],
            **self._groups(Detail(groups=max(4, detail.groups // 2), samples=min(1, detail.samples),
                                  candidates=0, relations=0, past=0, sample_chars=detail.sample_chars)),
        }

    def _incident(self) -> dict[str, Any]:
        first = self.events[0].ts if self.events else 0.0
        last = self.events[-1].ts if self.events else 0.0
        return {"id": self.incident_id, "severity": self.severity, "event_count": len(self.events),
                "first": _iso(first), "last": _iso(last), "entities": self.entities[:30],
                "more_entities": max(0, len(self.entities) - 30)}

    def _groups(self, detail: Detail) -> dict[str, Any]:
        shown = []
        for group in self.groups[:detail.groups]:
            samples = [{"id": e.id, "text": _sample_text(e, detail.sample_chars)} for e in group["samples"][:detail.samples]]
            shown.append({**{k: v for k, v in group.items() if k != "samples"}, "samples": samples})
        return {"event_groups": shown, "groups_shown": len(shown), "groups_total": len(self.groups)}

    def _neighbourhood(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        focus = set(self.entities) | {c.entity for c in self.candidates[:10]}
        radius = self.topology.blast_radius(focus)
        said = " (its events name its service, not the topology)"
        lines = [(r.source, r.target, f"{r.source} {r.type} {r.target}{said if r.source in self.described else ''}")
                 for r in self.topology.relations
                 if r.source in radius and r.target in radius and (r.source in focus or r.target in focus)]
        lines += [(a, b, f"{a} calls {b} (seen in traces, not in the topology)") for a, b in self.traced_calls]
        lines += [(e, h, f"{e} runs_on {h} (its events say, not the topology)") for e, h in self.placed.items()]
        # The leading candidates' relations first, so that what is cut at the limit is about the least likely.
        rank: dict[str, int] = {}
        for i, cand in enumerate(self.candidates):
            rank.setdefault(cand.entity, i)

        def nearest(line: tuple[str, str, str]) -> int:
            return min(rank.get(line[0], len(rank)), rank.get(line[1], len(rank)))

        return [text for *_, text in sorted(lines, key=nearest)][:limit]


def fit(render: Callable[[Detail], list[dict[str, str]]], budget_tokens: int) -> tuple[list[dict[str, str]], Detail, int]:
    """The most detailed rendering within `budget_tokens` (or the least detailed one if none fits)."""
    for detail in LEVELS:
        messages = render(detail)
        tokens = estimate_tokens("".join(m["content"] for m in messages))
        if tokens <= budget_tokens:
            return messages, detail, tokens
    return messages, detail, tokens


def catalog(contracts: Mapping[str, ActionContract]) -> list[dict[str, Any]]:
    """The action catalog as the prompt shows it: each contract's targets, risk and bounded parameters."""
    entries = []
    for name in sorted(contracts):
        contract = contracts[name]
        schema = contract.params_schema
        required = set(schema.get("required", ()))
        params = [f"{key}: {_param(spec)}{' (required)' if key in required else ''}"
                  for key, spec in schema.get("properties", {}).items()]
        entries.append({"action": name, "description": contract.description, "risk": contract.risk,
                        "target_types": list(contract.target_types), "approval": contract.needs_approval,
                        "params": "{" + ", ".join(params) + "}" if params else "none"})
    return entries


# -- helpers ---------------------------------------------------------------------------------------


def _incident_row(store: IncidentRepository | None, events: Sequence[Event]) -> dict[str, Any] | None:
    if store is None or not events:
        return None
    incident_id = store.event_incident_id(events[0].id)
    return store.incident(incident_id) if incident_id else None


def _condense(events: Sequence[Event], topology: Topology, rank: dict[str, int]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in events:
        entity = str(event.attributes.get("callee") or event.subject) if event.type == "rtem.trace.anomaly" else event.subject
        key = (entity, event.type, _kind(event, topology))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"entity": entity, "type": event.type, "kind": key[2], "severity": event.severity,
                                   "count": 0, "first_ts": event.ts, "last_ts": event.ts, "samples": [],
                                   "messages": set()}
        group["count"] += 1
        group["last_ts"] = event.ts
        if SEVERITY_ORDER.get(event.severity, 0) > SEVERITY_ORDER.get(group["severity"], 0):
            group["severity"] = event.severity
        if event.message not in group["messages"] and len(group["samples"]) < 3:
            group["messages"].add(event.message)
            group["samples"].append(event)
    ordered = sorted(groups.values(), key=lambda g: (-SEVERITY_ORDER.get(g["severity"], 0),
                                                      rank.get(g["entity"], len(rank) + 1), -g["count"],
                                                      g["first_ts"], g["entity"], g["kind"]))
    return [{"entity": untrusted_word(g["entity"]), "type": untrusted_word(g["type"]), "kind": untrusted_word(g["kind"]),
             "severity": untrusted_word(g["severity"], 10), "count": g["count"], "first": _hms(g["first_ts"]),
             "last": _hms(g["last_ts"]), "samples": g["samples"]} for g in ordered]


def _kind(event: Event, topology: Topology) -> str:
    attrs = event.attributes
    if event.type == "rtem.metric.anomaly":
        return str(attrs.get("metric") or event.message.split(" ", 1)[0] or "metric")
    if event.type == "rtem.trace.anomaly":
        return f"{attrs.get('anomaly', 'anomaly')} from {attrs.get('caller', '?')}"
    if event.type == "rtem.alert":
        return str(attrs.get("alertname") or "alert")
    if event.type == "rtem.log":  # one group per statement, as the reasoner counts them: a rare line is
        # not hidden behind three samples of the common one its entity also logs
        return "log: " + log_template(statement(event.message, event.subject, topology))
    return event.type.rsplit(".", 1)[-1]


def _sample_text(event: Event, limit: int) -> str:
    attrs = scrub_attributes(event.attributes)
    extra = " ".join(f"{k}={v}" for k, v in list(attrs.items())[:6])
    return untrusted(f"{event.message} {{{extra}}}" if extra else event.message, limit)


def _candidate(rank: int, cause: RootCause, topology: Topology) -> dict[str, Any]:
    # Explanations quote metric names from events, so they are scrubbed and bracket-free like event text.
    explanation = scrub(cause.explanation).replace("<", "‹").replace(">", "›")
    return {"rank": rank, "entity": cause.entity, "type": topology.entity_type(cause.entity) or "unknown",
            "fault_type": cause.fault_type, "confidence": cause.confidence, "evidence": cause.evidence[:5],
            "explanation": explanation[:400]}


def _recent_changes(store: IncidentRepository | None, events: Sequence[Event], topology: Topology,
                    entities: Sequence[str]) -> list[Event]:
    own = [e for e in events if e.type in CHANGE_TYPES]
    if store is None or not events:
        return own
    radius = topology.blast_radius(entities)
    found = {e.id: e for e in own}
    for row in store.change_events(events[0].ts - CHANGE_LOOKBACK_S, events[-1].ts):
        if row["type"] in CHANGE_TYPES and row["subject"] in radius and row["id"] not in found:
            found[row["id"]] = event_from_row(row)
    return sorted(found.values(), key=lambda e: (e.ts, e.id))


def _param(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return "one of " + "/".join(map(str, spec["enum"]))
    kind = spec.get("type", "any")
    if kind in ("integer", "number"):
        return f"{kind} {spec.get('minimum', '')}..{spec.get('maximum', '')}"
    if kind == "string":
        return f"string (max {spec.get('maxLength', '?')} chars)"
    return str(kind)


def _hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
