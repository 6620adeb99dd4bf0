"""The guard: judges one proposed action and says allow, deny or require_approval, with every reason.

It applies DESIGN.md §4 in a fixed order of built-in checks, then every guardrail:

  contract.unknown_action  deny              the action type has no contract
  contract.invalid         deny              params or target break the contract (one JSON path per problem)
  guard.blast_radius       deny              the target is outside the incident's blast radius
  contract.approval        require_approval  the contract names an approver role or rates the action high risk
  fitness.<action>.<term>  deny              the action does not remedy the diagnosed cause (rules/_fitness.py);
                                             judged only when the guard is told the diagnosis
  <guardrail ids>                            each guardrail whose `match` and gates hold, in file order

Every check runs even after one has denied, so the decision record lists all rules that matched, not
just the first. The strongest outcome wins (deny > require_approval > allow); when nothing matches, the
guard's default outcome applies. Nothing the reasoner writes can widen this: the contract, topology and
incident come from rtem, the proposal only from the reasoner.

Matching happens in two steps. durable-rules matches every rule's stateless `match` against one context
fact at once (rules/_engine.py, with its answer cache). Then, for the rules that matched and have gates
(rules/_gates.py: time windows, a state precondition, a rate limit, a blast-radius cap), the guard
checks those gates, reading the action history and the system state only when such a rule matched.
A gated rule's reason says what its gates saw ("2 earlier restart_instance on cart-0 within 1h").
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from bus import SEVERITY_RANK
from rules._contracts import ActionContract
from rules._engine import CompiledRuleset, lookup
from rules._fitness import Diagnosis, fitness_facts, remedy_rules
from rules._gates import EMPTY_HISTORY, NO_STATE, ActionHistory, SystemState
from rules._guardrails import Guardrail, Ruleset, _fields
from rules._proposal import OUTCOME_PRECEDENCE, Outcome, Proposal, RuleMatch, Verdict
from rules.topology import Topology

DEFAULT_APPROVER_ROLE = "approver"


class Guard:
    """Built once per (guardrails, contracts) pair: compiling the guardrails is the expensive part.

    `history` and `state` are what gated rules read (the agent passes SQLite-backed ones); without
    them, a limit or cap sees no earlier actions and a state precondition sees nothing observed.
    """

    def __init__(self, guardrails: Ruleset, contracts: Mapping[str, ActionContract],
                 default_outcome: Outcome = "allow", *, history: ActionHistory | None = None,
                 state: SystemState | None = None):
        if default_outcome not in OUTCOME_PRECEDENCE:
            raise ValueError(f"default_outcome must be one of {', '.join(OUTCOME_PRECEDENCE)}, "
                             f"not {default_outcome!r}")
        self.guardrails = guardrails
        self.contracts = dict(contracts)
        self.default_outcome = default_outcome
        self.history = history
        self.state = state
        self._rules = {rule.id: rule for rule in guardrails.rules}
        self._compiled = CompiledRuleset({rule.id: rule.match for rule in guardrails.rules}, name="guardrails")
        stateful = {rule.id: rule.state for rule in guardrails.rules if rule.state is not None}
        self._state_rules = CompiledRuleset(stateful, name="guardrail_state") if stateful else None
        self._state_fields = {rule_id: [path[-1] for path in _fields(cond, [])] for rule_id, cond in stateful.items()}
        self.needs_history = any(rule.gates.needs_history for rule in guardrails.rules)
        self.needs_state = bool(stateful)
        self.fitness = {rule.id: rule for rule in remedy_rules(self.contracts, guardrails.remedies)}
        self._fitness = CompiledRuleset({r.id: r.match for r in self.fitness.values()}, name="fitness") \
            if self.fitness else None

    def close(self) -> None:
        """Free the compiled guardrails (shared with every `bind` of this guard)."""
        self._compiled.close()
        for compiled in (self._state_rules, self._fitness):
            if compiled is not None:
                compiled.close()

    def bind(self, *, history: ActionHistory | None = None, state: SystemState | None = None) -> Guard:
        """This guard (sharing its compiled rules) reading another history and state."""
        bound = copy.copy(self)
        bound.history, bound.state = history, state
        return bound

    def evaluate(
        self,
        proposal: Proposal,
        *,
        topology: Topology,
        incident_entities: Iterable[str],
        incident_id: str,
        incident_severity: str,
        at: datetime,
        history: ActionHistory | None = None,
        state: SystemState | None = None,
        diagnosis: Diagnosis | None = None,
    ) -> Verdict:
        """Judge `proposal` for the incident. `at` is event time (timezone-aware), not the wall clock,
        so replaying a recording judges its proposals exactly as they were judged live. `history` and
        `state` override the guard's own for this one call (rule tests and replays use that).
        `diagnosis` is the cause the proposal answers: with it, remedy fitness is judged too."""
        contract = self.contracts.get(proposal.type)
        in_radius = proposal.target in topology.blast_radius(incident_entities)
        matches = list(self._builtin(proposal, contract, topology, in_radius))
        fact = context_fact(proposal, contract, topology, in_blast_radius=in_radius,
                            incident_id=incident_id, incident_severity=incident_severity, at=at,
                            diagnosis=diagnosis)
        matches += self._unfit(fact)
        at = at.astimezone(timezone.utc)
        gates = _GateContext(self, proposal, topology, at, history or self.history or EMPTY_HISTORY,
                             state or self.state or NO_STATE)
        for rule_id in self._compiled.match(fact):  # in file order
            rule = self._rules[rule_id]
            reason = rule.reason
            if rule.gates:
                notes = gates.check(rule)
                if notes is None:
                    continue
                reason = f"{reason} ({'; '.join(notes)})"
            role = (rule.approver_role or DEFAULT_APPROVER_ROLE) if rule.outcome == "require_approval" else None
            matches.append(RuleMatch(id=rule.id, outcome=rule.outcome, reason=reason, approver_role=role))
        return self._verdict(matches, contract)

    def _builtin(self, proposal: Proposal, contract: ActionContract | None, topology: Topology,
                 in_radius: bool) -> Iterator[RuleMatch]:
        if contract is None:
            known = ", ".join(sorted(self.contracts)) or "none"
            yield RuleMatch(id="contract.unknown_action", outcome="deny",
                            reason=f"no action contract for {proposal.type[:64]!r}; known actions: {known}")
        else:
            violations = contract.check(proposal, topology)
            if violations:
                yield RuleMatch(id="contract.invalid", outcome="deny",
                                reason=f"breaks the {contract.action} contract: " + "; ".join(map(str, violations)))
        if not in_radius:
            yield RuleMatch(id="guard.blast_radius", outcome="deny",
                            reason=f"target {proposal.target[:64]!r} is outside the incident's blast radius "
                                   "(its entities and those one relation away)")
        if contract is not None and contract.needs_approval:
            yield RuleMatch(id="contract.approval", outcome="require_approval",
                            approver_role=contract.approver_role or DEFAULT_APPROVER_ROLE,
                            reason=f"the {contract.action} contract ({contract.risk} risk) requires approval")

    def unfit(self, proposal: Proposal, topology: Topology, diagnosis: Diagnosis) -> list[RuleMatch]:
        """The fitness rules `proposal` breaks for `diagnosis` (empty: it fits); the same rules, through
        the same engine, as `evaluate` applies. The LLM reasoner's proposals are sorted with this."""
        fact = {"action": proposal.type, "target": proposal.target, "cause": diagnosis.cause,
                **fitness_facts(proposal.target, diagnosis, topology)}
        return self._unfit(fact)

    def _unfit(self, fact: dict[str, Any]) -> list[RuleMatch]:
        if self._fitness is None or "cause_fault" not in fact:
            return []
        return [RuleMatch(id=rule_id, outcome="deny", reason=self.fitness[rule_id].explain(fact))
                for rule_id in self._fitness.match(fact)]

    def _verdict(self, matches: list[RuleMatch], contract: ActionContract | None) -> Verdict:
        if matches:
            outcome = max((m.outcome for m in matches), key=OUTCOME_PRECEDENCE.__getitem__)
            reasons = [m.reason for m in matches]
        else:
            outcome = self.default_outcome
            reasons = [f"no rule matched; the guard's default is {outcome}"]
        role = None
        if outcome == "require_approval":
            # the first rule that asked for approval names the role: built-ins, then guardrails in file order
            role = next((m.approver_role for m in matches if m.approver_role), DEFAULT_APPROVER_ROLE)
        return Verdict(
            outcome=outcome,
            rules=[m.id for m in matches],
            reasons=reasons,
            matches=matches,
            approver_role=role,
            ruleset=self.guardrails.digest,
            contract=contract.digest if contract else None,
        )


def context_fact(
    proposal: Proposal,
    contract: ActionContract | None,
    topology: Topology,
    *,
    in_blast_radius: bool,
    incident_id: str,
    incident_severity: str,
    at: datetime,
    diagnosis: Diagnosis | None = None,
) -> dict[str, Any]:
    """The fact guardrail conditions match against. A field that does not apply is absent: every
    comparison with an absent field is false, `ne` and `not_in` included; `{exists: false}` tests for it.

    action              the proposed action type (`restart_instance`)
    risk                the action contract's risk: low, medium or high; absent without a contract
    proposed_by         who proposed it: `deterministic`, or the LLM reasoner's name
    cause               the root-cause entity the proposal answers, when the reasoner named one
    target              the target entity id
    target_type         its entity type: service, instance, host, database, cache, queue, external;
                        absent when the target is not in the topology
    target_service      the service an instance belongs to; any other entity stands for itself
    target_tier         the target's tier (an int, 0 or 1 = most critical); an instance without a tier
                        takes its service's, so a tier-1 rule also covers the service's instances
    target_labels.<k>   the target's labels, merged over its service's labels for an instance
    incident_id         the incident the proposal is for
    incident_severity   its severity: info, warning, error, critical
    incident_severity_rank  the same as a number: 0 info, 1 warning, 2 error, 3 critical
    in_blast_radius     true when the target is an incident entity or one relation away from one
    hour, minute        event time `at` in UTC: hour 0-23, minute 0-59
    weekday             0 = Monday … 6 = Sunday (UTC)
    date                `YYYY-MM-DD` (UTC)
    params.<k>          the proposal's parameters, as proposed (a contract violation denies anyway)
    cause_type, cause_fault, target_role, target_signals, target_deployed, target_changed
                        what the diagnosis says and how the target stands to its cause, when the guard is
                        told the diagnosis (rules/_fitness.py documents each)
    """
    if at.tzinfo is None:
        raise ValueError("the guard's evaluation time must be timezone-aware (event time, in UTC)")
    at = at.astimezone(timezone.utc)
    fact: dict[str, Any] = {
        "action": proposal.type,
        "proposed_by": proposal.proposed_by,
        "target": proposal.target,
        "incident_id": incident_id,
        "incident_severity": incident_severity,
        "in_blast_radius": in_blast_radius,
        "hour": at.hour,
        "minute": at.minute,
        "weekday": at.weekday(),
        "date": at.date().isoformat(),
        "params": dict(proposal.params),
    }
    if incident_severity in SEVERITY_RANK:
        fact["incident_severity_rank"] = SEVERITY_RANK[incident_severity]
    if contract is not None:
        fact["risk"] = contract.risk
    if proposal.cause:
        fact["cause"] = proposal.cause
    entity = topology.by_id.get(proposal.target)
    if entity is not None:
        service = topology.by_id.get(topology.service_of(entity.id))
        fact["target_type"] = entity.type
        fact["target_service"] = service.id if service else entity.id
        tier = entity.tier if entity.tier is not None else (service.tier if service else None)
        if tier is not None:
            fact["target_tier"] = tier
        labels = {**(service.labels if service and service is not entity else {}), **entity.labels}
        if labels:
            fact["target_labels"] = labels
    if diagnosis is not None:
        fact["cause"] = diagnosis.cause
        fact.update(fitness_facts(proposal.target, diagnosis, topology))
    return fact


class _GateContext:
    """Gate checks for one evaluation; what they read (state, the target's place) is read once."""

    def __init__(self, guard: Guard, proposal: Proposal, topology: Topology, at: datetime,
                 history: ActionHistory, state: SystemState):
        self.guard, self.proposal, self.topology, self.at = guard, proposal, topology, at
        self.history, self.state = history, state
        self._snapshot: Mapping[str, Any] | None = None
        self._state_hits: set[str] | None = None

    def check(self, rule: Guardrail) -> list[str] | None:
        """What the rule's gates saw, or None when one of them does not hold."""
        gates, at, notes = rule.gates, self.at, []
        if gates.during:
            inside = next((w for w in gates.during if w.contains(at)), None)
            if inside is None:
                return None
            notes.append(f"during {inside.text}")
        if gates.outside:
            if any(w.contains(at) for w in gates.outside):
                return None
            notes.append("outside " + ", ".join(w.text for w in gates.outside))
        if gates.state is not None:
            if rule.id not in self._state():
                return None
            shown = ", ".join(f"{name}={lookup(self._snapshot, name)!r}" for name in self.guard._state_fields[rule.id])
            notes.append(f"state of {self.proposal.target}: {shown}")
        for gate in (gates.limit, gates.cap):
            if gate is None:
                continue
            target = self.proposal.target
            service = self.topology.service_of(target)
            fired, note = gate.check(self.proposal.type, target, service, self.topology.instances(service), at,
                                     self.history)
            if not fired:
                return None
            notes.append(note)
        return notes

    def _state(self) -> set[str]:
        if self._state_hits is None:
            self._snapshot = dict(self.state.latest(self.proposal.target, self.at) or {})
            # an empty snapshot is matched too: `{exists: false}` is how a rule says "when nothing is known"
            self._state_hits = set(self.guard._state_rules.match(self._snapshot))
        return self._state_hits
