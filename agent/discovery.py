"""Topology discovery from Prometheus: entities and relations made from target and series labels.

A mapping file (YAML; docs/integrations.md) says which labels make what:

    targets:                                   # GET /api/v1/targets: each active target's labels
      - match: {job: "shop-.*"}                # every label given must fully match its regex
        entities:
          - {type: instance, id: "{instance}", labels: {zone: "{zone}"}}
          - {type: host, id: "{node}"}
        relations:
          - {source: "{instance}", type: runs_on, target: "{node}"}
          - {source: "{instance}", type: instance_of, target: "{service}"}
    series:                                    # GET /api/v1/series?match[]=SELECTOR: each series' labels
      - selector: 'shop_build_info'
        entities: [{type: service, id: "{service}", tier: 2}]

`{label}` is the label's value; an entity or relation whose template names a label the target or
series does not have (or has empty) is skipped. `build_topology` turns the labels into entities and
relations (pure); `Discovery` asks Prometheus; the reloader (agent/topology_reload.py) merges the result
under the topology file, the file winning every conflict, and audits each change as
`topology.discovered`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules import Entity, Relation, RulesError, Topology, TopologyError
from rules._files import read_rule_file
from rules.topology import EntityType, RelationType

from .topology_reload import TopologyReloader, TopologySource

log = logging.getLogger("rtem.topology")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class EntityTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: EntityType
    id: str = Field(min_length=1)
    tier: int | None = None
    labels: dict[str, str] = {}


class RelationTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    type: RelationType
    target: str = Field(min_length=1)


class LabelRule(BaseModel):
    """For every label set that matches: these entities and relations."""

    model_config = ConfigDict(extra="forbid")

    match: dict[str, str] = {}
    entities: list[EntityTemplate] = []
    relations: list[RelationTemplate] = []

    @field_validator("match")
    @classmethod
    def _regexes(cls, match: dict[str, str]) -> dict[str, str]:
        for label, pattern in match.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"match.{label}: {pattern!r} is not a regular expression ({exc})") from None
        return match

    def matches(self, labels: dict[str, str]) -> bool:
        return all(re.fullmatch(pattern, labels.get(label, "")) for label, pattern in self.match.items())


class SeriesRule(LabelRule):
    selector: str = Field(min_length=1, description="a PromQL series selector, e.g. up{job=\"shop\"}")


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[LabelRule] = []
    series: list[SeriesRule] = []
    lookback_s: float = Field(3600.0, gt=0, description="series seen in this much time before now")

    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        """Read and check a mapping file; TopologyError at the file:line of the first problem."""
        try:
            parsed = read_rule_file(path)
        except RulesError as exc:
            raise TopologyError(path, exc.reason, exc.hint, exc.line, exc.column) from None
        try:
            return cls.model_validate(parsed.doc if parsed.doc is not None else {})
        except ValidationError as exc:
            first = exc.errors()[0]
            line, column = parsed.locate(first["loc"])
            where = ".".join(map(str, first["loc"])) or "the document"
            raise TopologyError(path, f"{where}: {first['msg']}", "a mapping has `targets` and `series` rules, each "
                                "with `entities` and `relations` templates (docs/integrations.md)", line, column) from None


@dataclass
class Labels:
    """What Prometheus said: each active target's labels, each selector's series."""

    targets: list[dict[str, str]] = field(default_factory=list)
    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def build_topology(mapping: Mapping, found: Labels) -> Topology:
    """The entities and relations the mapping makes of the labels. Relations may name entities only the
    topology file has: they are kept, and the merge drops those that end nowhere."""
    entities: dict[str, Entity] = {}
    relations: dict[tuple[str, str, str], Relation] = {}
    batches = [(mapping.targets, found.targets)] + [([rule], found.series.get(rule.selector, [])) for rule in mapping.series]
    for rules, label_sets in batches:
        # Prometheus answers in no set order: label sets in a fixed order make the same answer the same
        # topology (and digest), so an unchanged system is never "discovered" again.
        for labels in sorted(label_sets, key=lambda found_labels: sorted(found_labels.items())):
            for rule in rules:
                if not rule.matches(labels):
                    continue
                for template in rule.entities:
                    entity = _entity(template, labels)
                    if entity is not None:
                        entities.setdefault(entity.id, entity)  # the first mapping rule to name an id decides it
                for template in rule.relations:
                    source, target = render(template.source, labels), render(template.target, labels)
                    if source and target and source != target:
                        relations.setdefault((source, template.type, target),
                                             Relation(source=source, target=target, type=template.type))
    return Topology(entities=tuple(entities[key] for key in sorted(entities)),
                    relations=tuple(relations[key] for key in sorted(relations)))


def render(template: str, labels: dict[str, str]) -> str | None:
    """`{label}` replaced by its value; None when a named label is missing or empty."""
    missing = False

    def value(found: re.Match) -> str:
        nonlocal missing
        text = labels.get(found[1], "")
        missing = missing or not text
        return text

    text = _PLACEHOLDER.sub(value, template)
    return None if missing else text


def _entity(template: EntityTemplate, labels: dict[str, str]) -> Entity | None:
    entity_id = render(template.id, labels)
    if not entity_id:
        return None
    rendered = {k: v for k, t in template.labels.items() if (v := render(t, labels))}
    return Entity(id=entity_id, type=template.type, tier=template.tier, labels=rendered)


class Discovery:
    """Asks one Prometheus for the labels a mapping needs; `discover()` is one look (blocking)."""

    def __init__(self, prometheus_url: str, mapping: Mapping, *, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.url = prometheus_url.rstrip("/")
        self.mapping = mapping
        self.timeout_s = timeout_s
        self.clock = clock

    def discover(self) -> Topology:
        return build_topology(self.mapping, self.fetch())

    def fetch(self) -> Labels:
        found = Labels()
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            if self.mapping.targets:
                data = _data(client.get("/api/v1/targets", params={"state": "active"}), "targets")
                found.targets = [dict(t.get("labels") or {}) for t in data.get("activeTargets", [])]
            now = self.clock()
            for rule in self.mapping.series:
                found.series[rule.selector] = [dict(s) for s in _data(client.get("/api/v1/series", params={
                    "match[]": rule.selector, "start": now - self.mapping.lookback_s, "end": now}), "series")]
        return found

    async def run(self, source: TopologyReloader, interval_s: float, stop: asyncio.Event) -> None:
        """Discover now and every `interval_s` until `stop`; a failed look keeps what is in force."""
        failing = False
        while not stop.is_set():
            try:
                source.discovered(await asyncio.to_thread(self.discover), self.url)
                if failing:
                    log.info("topology discovery from %s works again", self.url)
                failing = False
            except Exception as exc:  # Prometheus down or answering nonsense: the topology in force stays
                if not failing:
                    log.error("topology discovery from %s failed, the topology in force stays: %s", self.url, exc)
                failing = True
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass


def topology_tasks(settings, source: TopologySource, stop: asyncio.Event) -> list[asyncio.Task]:
    """What `rtem run` starts for its topology: the file's watcher (topology_reload), and discovery from
    Prometheus (topology_mapping with prometheus_url). A bad mapping file stops start-up at its line."""
    if not isinstance(source, TopologyReloader):
        if settings.topology_mapping:
            log.error("topology discovery needs a topology file (RTEM_TOPOLOGY) to merge into; not started")
        return []
    tasks = []
    if settings.topology_reload:
        tasks.append(asyncio.create_task(source.watch(1.0, stop), name="topology"))
    if settings.topology_mapping:
        url = getattr(settings, "prometheus_url", None)
        if not url:
            raise TopologyError(settings.topology_mapping, "discovery needs Prometheus",
                                "set RTEM_PROMETHEUS_URL, or unset RTEM_TOPOLOGY_MAPPING")
        discovery = Discovery(url, Mapping.load(settings.topology_mapping))
        tasks.append(asyncio.create_task(discovery.run(source, settings.topology_discovery_interval_s, stop),
                                         name="discovery"))
    return tasks


def _data(response: httpx.Response, what: str) -> Any:
    """The `data` of a Prometheus API answer, or an error that says what Prometheus said."""
    try:
        body = response.json()
    except ValueError:
        raise RuntimeError(f"Prometheus {what}: HTTP {response.status_code}, not JSON") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"Prometheus {what}: HTTP {response.status_code}: {body.get('error', body)}")
    return body["data"]


def describe(topology: Topology) -> dict[str, Sequence[str]]:
    """Entities as `type id` and relations as `source type target`, for people and --json."""
    return {"entities": [f"{e.type} {e.id}" for e in topology.entities],
            "relations": [f"{r.source} {r.type} {r.target}" for r in topology.relations]}
