"""From a diagnosed root cause to remediation proposals, through the action catalog.

Only the top cause gets remedies: acting on a runner-up hypothesis would be acting on a guess the
reasoner itself ranks lower. Every target is the cause or one topology relation away from it, so the
guard's blast-radius check (DESIGN.md section 4) can pass, and every list ends with notify_oncall.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agent.models import RootCause
from bus import Event
from rules._proposal import Proposal
from rules.topology import Topology

from ._catalog import SCALE_OUT_REPLICAS, SHED_LOAD_PERCENT, ActionRule, action_rules

MAX_REMEDIES = 2
MAX_REPLICAS = 20


def propose_remedies(causes: Sequence[RootCause], topology: Topology, events: Sequence[Event] | None,
                     proposed_by: str) -> list[Proposal]:
    if not causes or causes[0].entity not in topology:
        return []
    cause = causes[0]
    entity_type = topology.entity_type(cause.entity) or "unknown"
    proposals: list[Proposal] = []
    for rule in action_rules(entity_type, cause.fault_type):
        proposal = _proposal(rule, cause, topology, events, proposed_by)
        if proposal is not None and all((p.type, p.target) != (proposal.type, proposal.target) for p in proposals):
            proposals.append(proposal)
        if len(proposals) == MAX_REMEDIES:
            break
    proposals.append(Proposal(
        type="notify_oncall", target=cause.entity, cause=cause.entity, proposed_by=proposed_by,
        params={"summary": _summary(cause, proposals)},
        reason="a person should know what was found and what is being done about it",
    ))
    return proposals


def _proposal(rule: ActionRule, cause: RootCause, topology: Topology, events: Sequence[Event] | None,
              proposed_by: str) -> Proposal | None:
    target = _aim(rule.aim, cause.entity, topology, events or ())
    if target is None:
        return None
    params: dict = {}
    if rule.type == "scale_out":
        known = len(topology.instances(target))
        params = {"replicas": min(MAX_REPLICAS, max(SCALE_OUT_REPLICAS, known + 1))}
    elif rule.type == "shed_load":
        params = {"percent": SHED_LOAD_PERCENT}
    elif rule.type == "open_circuit":
        caller = _busiest_caller(target, topology, events or ())
        if caller is None:
            return None
        params = {"from": caller}
    elif rule.type == "rollback_deploy" and not _deployed(cause, target, topology, events):
        return None
    elif rule.type == "drain_host" and events is not None and not any(
            e.subject == target and e.severity != "info" for e in events):
        return None  # a host is drained only on its own signals, not on its workloads' alone
    return Proposal(type=rule.type, target=target, params=params, cause=cause.entity, proposed_by=proposed_by,
                    reason=f"{cause.fault_type} at {cause.entity}: {rule.why}")


def _aim(aim: str, entity: str, topology: Topology, events: Sequence[Event]) -> str | None:
    """The entity an action rule points at, always the cause or one relation away from it."""
    if aim == "self":
        return entity
    if aim == "instance":
        instances = topology.instances(entity)
        counts = Counter(e.subject for e in events if e.severity != "info")
        return min(instances, key=lambda i: (-counts.get(i, 0), i)) if instances else None
    if aim == "service":
        service = topology.service_of(entity)
        return service if service != entity else None
    if aim == "host":
        return topology.host_of(entity)
    if aim == "caller":
        return entity if topology.sources(entity, "calls") else None
    if aim == "user":
        users = sorted(topology.sources(entity, "uses"))
        return users[0] if users else None
    return None


def _busiest_caller(service: str, topology: Topology, events: Sequence[Event]) -> str | None:
    """The caller of `service` with the most anomalies in the incident (first by id without events)."""
    callers = sorted(topology.sources(service, "calls"))
    if not callers:
        return None
    counts = Counter(topology.service_of(e.subject) for e in events if e.severity != "info")
    counts.update(topology.service_of(str(e.attributes.get("caller"))) for e in events
                  if e.type == "rtem.trace.anomaly" and e.attributes.get("callee") in topology
                  and topology.service_of(str(e.attributes["callee"])) == service)
    return min(callers, key=lambda c: (-counts.get(c, 0), c))


def _deployed(cause: RootCause, service: str, topology: Topology, events: Sequence[Event] | None) -> bool:
    """rollback_deploy needs a deployment to roll back: one among `events`, or the cause's fault type
    when no events are given (the reasoner only says bad_deploy after seeing a deployment)."""
    if events is None:
        return cause.fault_type == "bad_deploy"
    return any(e.type == "rtem.change.deploy" and e.subject in topology and topology.service_of(e.subject) == service
               for e in events)


def _summary(cause: RootCause, proposals: Sequence[Proposal]) -> str:
    actions = ", ".join(f"{p.type} {p.target}" for p in proposals) or "no automatic action"
    return (f"Probable root cause: {cause.entity} ({cause.fault_type}, share {cause.share}). "
            f"Proposed: {actions}.")
