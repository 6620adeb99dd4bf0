"""Remedy fitness: whether an action answers the diagnosed cause, judged by rules like any guardrail.

An action contract may say what its action remedies (`x-rtem.remedies`): which fault types of the
diagnosed cause, which entity types the cause may be, how the target must stand to the cause, and what
evidence the incident must hold about the target. A guardrail file may replace any of those terms per
action (a top-level `remedies:` section), to tighten or extend them. From the merged terms the guard
builds one deny rule per term and action, `fitness.<action>.<term>`, compiled by the rule engine with the
guardrails and matched against the same context fact, so a verdict names the term that failed:

    fitness.drain_host.cause   does not remedy the diagnosed cause: drain_host remedies a cause that is a
                               host, and auth-1 is an instance

The fact fields fitness reads are there only when the guard is told the diagnosis (`Diagnosis`): the
agent always tells it; rule tests and replays may. Without one no fitness rule matches (a comparison with
an absent field is false), as the guard cannot judge what it was not told.

    cause_type       the diagnosed cause's entity type
    cause_fault      its fault type (FAULT_TYPES)
    target_role      how the target stands to the cause (TARGET_ROLES, the first that holds)
    target_signals   anomalous events in the incident about the target itself (for a service, also its
                     instances)
    target_deployed  a deployment of the target's service is among the incident's events
    target_changed   a configuration change of the target's service is among the incident's events
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rules._files import RuleFile
from rules.topology import Topology

# The fault-type vocabulary a diagnosis uses (agent/reasoner/_catalog.py describes each).
FAULT_TYPES = ("cpu", "memory", "disk_io", "disk_space", "network", "connections", "process", "latency", "errors",
               "bad_deploy", "bad_config", "unknown")
# How a target may stand to the diagnosed cause, most specific first.
TARGET_ROLES = ("cause", "service_of_cause", "instance_of_cause", "host_of_cause", "caller_of_cause",
                "user_of_cause", "neighbour", "unrelated")
EVIDENCE = {
    "target_signals": "anomalous events about the target itself",
    "target_deployed": "a deployment of the target in the incident",
    "target_changed": "a configuration change of the target in the incident",
}
TERMS = ("faults", "causes", "targets", "evidence")
FITNESS_PREFIX = "fitness."
FITNESS_FIELDS = frozenset({"cause_type", "cause_fault", "target_role", "target_signals", "target_deployed",
                            "target_changed"})


class Diagnosis(BaseModel):
    """What the guard is told of the diagnosis a proposal answers: the top cause and its fault type,
    and what the incident's events show about each entity (built by agent/fitness.py)."""

    model_config = ConfigDict(frozen=True)

    cause: str
    fault: str = "unknown"
    signals: dict[str, int] = Field(default_factory=dict, description="entity -> anomalous events about it")
    deployed: tuple[str, ...] = Field(default=(), description="entities a deployment event named")
    changed: tuple[str, ...] = Field(default=(), description="entities a configuration change event named")


class Remedy(BaseModel):
    """What an action remedies. A term left out (None) does not constrain."""

    model_config = ConfigDict(frozen=True)

    faults: tuple[str, ...] | None = None
    causes: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    evidence: tuple[str, ...] = ()

    def merged(self, override: Mapping[str, Any]) -> Remedy:
        """These terms with a rule file's replacements (each term given replaces the contract's)."""
        return self.model_copy(update={k: tuple(v) for k, v in override.items() if k in TERMS})


def fitness_facts(target: str, diagnosis: Diagnosis, topology: Topology) -> dict[str, Any]:
    """The context-fact fields fitness rules (and any guardrail) can match, for one target."""
    cause = diagnosis.cause
    service = topology.service_of(target)
    related = {target, *topology.instances(target)} if topology.entity_type(target) == "service" else {target}
    fact: dict[str, Any] = {
        "cause_fault": diagnosis.fault,
        "target_role": target_role(target, cause, topology),
        "target_signals": sum(diagnosis.signals.get(e, 0) for e in related),
        "target_deployed": any(topology.service_of(e) == service for e in diagnosis.deployed),
        "target_changed": any(topology.service_of(e) == service for e in diagnosis.changed),
    }
    cause_type = topology.entity_type(cause)
    if cause_type is not None:
        fact["cause_type"] = cause_type
    return fact


def target_role(target: str, cause: str, topology: Topology) -> str:
    """How `target` stands to `cause`: the first of TARGET_ROLES that holds."""
    if target == cause:
        return "cause"
    service = topology.service_of(cause)
    if target == service:
        return "service_of_cause"
    instances = topology.instances(cause)
    if target in instances:
        return "instance_of_cause"
    hosts = {topology.host_of(e) for e in (cause, *instances)}
    if target in hosts:
        return "host_of_cause"
    if target in topology.sources(cause, "calls") or target in topology.sources(service, "calls") \
            or topology.service_of(target) in topology.sources(service, "calls"):
        return "caller_of_cause"
    if target in topology.sources(cause, "uses"):
        return "user_of_cause"
    if target in topology.neighbours(cause):
        return "neighbour"
    return "unrelated"


class FitnessRule(BaseModel):
    """One term of one action's remedy, as a deny rule over the context fact."""

    model_config = ConfigDict(frozen=True)

    id: str
    action: str
    term: str
    match: dict[str, Any]
    reason: str
    source: str = Field(description="the contract file, or the rule file that replaced the term")

    def explain(self, fact: Mapping[str, Any]) -> str:
        """The reason with what the diagnosis said filled in."""
        return self.reason.format_map(_Shown(fact))


def remedy_rules(contracts: Mapping[str, Any], overrides: Mapping[str, RemedyOverride]) -> list[FitnessRule]:
    """Every action's remedy (its contract's `remedies`, with the rule files' replacements) as deny rules."""
    rules: list[FitnessRule] = []
    for action, contract in sorted(contracts.items()):
        override = overrides.get(action)
        if contract.remedies is None and override is None:
            continue
        remedy = (contract.remedies or Remedy()).merged(override.terms if override else {})
        sources = {term: contract.source for term in TERMS}
        sources.update(override.sources if override else {})
        rules += fitness_rules(action, remedy, sources)
    return rules


def fitness_rules(action: str, remedy: Remedy, sources: Mapping[str, str]) -> list[FitnessRule]:
    """The deny rules of one action's remedy; `sources` says where each term was written."""
    lead = f"does not remedy the diagnosed cause: {action} remedies"
    rules = []

    def add(term: str, condition: dict[str, Any], reason: str) -> None:
        rules.append(FitnessRule(id=f"{FITNESS_PREFIX}{action}.{term}", action=action, term=term,
                                 match={"action": action, **condition}, reason=f"{lead} {reason}",
                                 source=sources.get(term, "")))

    if remedy.faults is not None and "*" not in remedy.faults:
        add("faults", {"cause_fault": {"not_in": list(remedy.faults)}},
            f"faults of kind {', '.join(remedy.faults)}; the diagnosis says {{cause_fault}} at {{cause}}")
    if remedy.causes is not None and "*" not in remedy.causes:
        add("causes", {"cause_type": {"not_in": list(remedy.causes)}},
            f"a cause that is {' or '.join(map(_a, remedy.causes))}; {{cause}} is {{cause_type_a}}")
    if remedy.targets is not None and "*" not in remedy.targets:
        add("targets", {"target_role": {"not_in": list(remedy.targets)}},
            f"on {_roles(remedy.targets)}; {{target}} is {{target_role_words}} {{cause}}")
    for need in remedy.evidence:
        condition = {need: {"eq": 0}} if need == "target_signals" else {need: {"eq": False}}
        add(f"evidence.{need}", condition, f"only with {EVIDENCE[need]}; the incident has none about {{target}}")
    return rules


_ROLE_NAMES = {
    "cause": "the cause itself", "service_of_cause": "the cause's service", "instance_of_cause": "an instance of the cause",
    "host_of_cause": "the cause's host", "caller_of_cause": "a caller of the cause", "user_of_cause": "a user of the cause",
    "neighbour": "another neighbour of the cause", "unrelated": "an entity unrelated to the cause",
}
# "{target} is <words> {cause}"
_ROLE_WORDS = {"cause": "the cause,", "service_of_cause": "the service of", "instance_of_cause": "an instance of",
               "host_of_cause": "the host of", "caller_of_cause": "a caller of", "user_of_cause": "a user of",
               "neighbour": "a neighbour of", "unrelated": "not related to"}


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _roles(roles: tuple[str, ...]) -> str:
    return " or ".join(_ROLE_NAMES.get(r, r) for r in roles)


class _Shown(dict):
    """A fact as format_map reads it: the target role in words, a missing field as "unknown"."""

    def __init__(self, fact: Mapping[str, Any]):
        super().__init__(fact)
        self["target_role_words"] = _ROLE_WORDS.get(str(fact.get("target_role")), "not related to")
        self["cause_type_a"] = _a(str(fact.get("cause_type", "unknown")))

    def __missing__(self, key: str) -> str:
        return "unknown"


class RemedyOverride(BaseModel):
    """The remedy terms of one action that rule files replace, and where each was written."""

    model_config = ConfigDict(frozen=True)

    terms: dict[str, tuple[str, ...]]
    sources: dict[str, str] = Field(description="term -> file:line")
    file: str = Field(description="the last file that named the action")
    line: int
    column: int


def read_remedies(rule_file: RuleFile, remedies: dict[str, RemedyOverride]) -> None:
    """Add one file's `remedies:` section to `remedies`; the schema reports what is malformed, and a
    malformed entry is left out here."""
    section = rule_file.doc.get("remedies") if isinstance(rule_file.doc, Mapping) else None
    if not isinstance(section, Mapping):
        return
    for action, terms in section.items():
        if not isinstance(action, str) or not isinstance(terms, Mapping) or not terms or not all(
                k in TERMS and isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in terms.items()):
            continue
        old = remedies.get(action)
        merged = dict(old.terms) if old else {}
        sources = dict(old.sources) if old else {}
        for term, values in terms.items():
            merged[term] = tuple(values)
            sources[term] = f"{rule_file.path}:{rule_file.locate(['remedies', action, term])[0]}"
        line, column = rule_file.locate(["remedies", action])
        remedies[action] = RemedyOverride(terms=merged, sources=sources, file=str(rule_file.path), line=line,
                                          column=column)
