"""The query file: allowlisted PromQL templates per entity type and aspect, and how one is rendered.

Only the templates of this file ever run, against Prometheus or for the LLM. A template names the
entity through placeholders (`{{id}}`, `{{service}}`, `{{host}}`, `{{labels.zone}}`) that may only
stand inside double-quoted PromQL strings, and their values are escaped as PromQL string literals, so
no entity id or label can change what a query selects beyond its own label value. Mistakes are refused
at load time with the file, line and column (`RulesError`, as for rule files).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rules import Topology
from rules._files import RuleFile, read_rule_file

DEFAULT_QUERIES = Path(str(resources.files("agent.investigate").joinpath("queries.yaml")))
ENTITY_TYPES = ("service", "instance", "host", "database", "cache", "queue", "external")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_NAMES = re.compile(r"^(id|service|host|labels\.[A-Za-z_][A-Za-z0-9_]*)$")


class Aspect(str, Enum):
    saturation = "saturation"
    errors = "errors"
    latency = "latency"
    restarts = "restarts"


class QuerySpec(BaseModel):
    """One template: the PromQL, the metric name its evidence carries (which tells the reasoner what
    it measures), and the threshold beyond which a value is anomalous."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, max_length=2000)
    metric: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$")
    above: float | None = None
    below: float | None = None
    severity: Literal["warning", "error", "critical"] = "warning"
    description: str = ""

    @model_validator(mode="after")
    def _one_threshold(self) -> QuerySpec:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` or `below`: the value beyond which the result is anomalous")
        return self

    @property
    def direction(self) -> str:
        return "up" if self.above is not None else "down"

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    def anomalous(self, value: float) -> bool:
        return value > self.above if self.above is not None else value < self.below  # type: ignore[operator]


class _QueryDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    queries: dict[Literal[ENTITY_TYPES], dict[Aspect, QuerySpec]]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Template:
    """An allowlisted query, named `<entity type>.<aspect>` (what the LLM's tool takes)."""

    entity_type: str
    aspect: Aspect
    spec: QuerySpec

    @property
    def name(self) -> str:
        return f"{self.entity_type}.{self.aspect.value}"


class RenderError(ValueError):
    """A template that cannot be rendered for an entity (a label it names is missing)."""


@dataclass(frozen=True)
class QuerySet:
    """The templates of one query file, by name, and the file's digest for decision records."""

    templates: dict[str, Template]
    origin: str
    digest: str

    def for_type(self, entity_type: str | None) -> list[Template]:
        return [t for t in self.templates.values() if t.entity_type == entity_type]

    def get(self, name: str) -> Template | None:
        return self.templates.get(name)


def load_queries(path: str | Path | None = None) -> QuerySet:
    """The query file at `path` (the packaged one when None); RulesError at the offending line."""
    rule_file = read_rule_file(path or DEFAULT_QUERIES)
    if not isinstance(rule_file.doc, dict):
        raise rule_file.error((), "a query file is a mapping with `version: 1` and `queries:`",
                              "see docs/integrations.md, Prometheus")
    try:
        doc = _QueryDoc.model_validate(rule_file.doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        raise rule_file.error(loc, _reason(first, loc), _hint(first)) from None
    templates: dict[str, Template] = {}
    for entity_type, aspects in doc.queries.items():
        for aspect, spec in aspects.items():
            where = ("queries", entity_type, aspect.value)
            _check_placeholders(rule_file, where + ("query",), spec.query)
            template = Template(entity_type, aspect, spec)
            templates[template.name] = template
    return QuerySet(templates, str(rule_file.path), hashlib.sha256(rule_file.text.encode()).hexdigest()[:16])


def render(template: Template, entity: str, topology: Topology) -> str:
    """The template's PromQL for `entity`, each placeholder replaced by its escaped value."""
    values = placeholder_values(entity, topology)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise RenderError(f"{template.name} needs {{{{{name}}}}}, which {entity} does not have")
        return promql_escape(values[name])

    return _PLACEHOLDER.sub(value, template.spec.query)


def placeholder_values(entity: str, topology: Topology) -> dict[str, str]:
    found = topology.by_id.get(entity)
    values = {"id": entity, "service": topology.service_of(entity)}
    host = topology.host_of(entity)
    if host:
        values["host"] = host
    if found is not None:
        values.update({f"labels.{k}": str(v) for k, v in found.labels.items()})
    return values


def promql_escape(value: str) -> str:
    """`value` as the inside of a double-quoted PromQL string: backslashes, quotes and control
    characters escaped, so it can neither end the string nor change the selector."""
    out = []
    for ch in value:
        if ch in ('\\', '"'):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _check_placeholders(rule_file: RuleFile, where: tuple, query: str) -> None:
    """Every placeholder is a known name and stands inside a double-quoted string literal."""
    quoted = _quoted_spans(query)
    for match in _PLACEHOLDER.finditer(query):
        name = match.group(1)
        if not _NAMES.match(name):
            raise rule_file.error(where, f"unknown placeholder {{{{{name}}}}}",
                                  "use {{id}}, {{service}}, {{host}} or {{labels.NAME}}")
        if not any(start < match.start() and match.end() <= end for start, end in quoted):
            raise rule_file.error(where, f"placeholder {{{{{name}}}}} is outside a double-quoted string",
                                  'write it as a label value: {entity="{{id}}"}')
    if "{{" in _PLACEHOLDER.sub("", query):
        raise rule_file.error(where, "a `{{` that is not a placeholder", "placeholders look like {{id}}")


def _quoted_spans(query: str) -> list[tuple[int, int]]:
    """(start, end) of each double-quoted string in `query`, honouring backslash escapes."""
    spans, i, start = [], 0, None
    while i < len(query):
        ch = query[i]
        if start is not None and ch == "\\":
            i += 2
            continue
        if ch == '"':
            if start is None:
                start = i
            else:
                spans.append((start, i))
                start = None
        i += 1
    return spans


def _reason(error: dict, loc: tuple) -> str:
    if error["type"] == "extra_forbidden" and loc:
        return f"unknown field {loc[-1]!r}"
    where = f"{loc[-1]}: " if loc and isinstance(loc[-1], str) else ""
    given = error.get("input")
    if isinstance(given, (str, int, float)) and not isinstance(given, bool):
        return f"{where}{given!r}: {error['msg']}"
    return f"{where}{error['msg']}"


def _hint(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "allowed: query, metric, above, below, severity, description"
    if error["type"] in ("literal_error", "enum"):
        return "entity types: " + ", ".join(ENTITY_TYPES) + "; aspects: " + ", ".join(a.value for a in Aspect)
    return ""
