"""Remedy fitness on the agent's side: what the guard is told of a diagnosis, and the LLM's proposals
kept to the remedies that fit it.

The rules are the guard's (rules/_fitness.py: each contract's `remedies`, tightened or extended by rule
files). Here the incident's diagnosis becomes the `Diagnosis` the guard reads (the top cause, its fault
type, and what the incident's events say about each entity), and `keep_fit` applies the rules to a
non-deterministic reasoner's proposals before the guard judges the plan: an unfit proposal is replaced by
the deterministic remedies for the cause, and the notes say which and why, for the decision record. The
guard judges every proposal again with the same diagnosis, so an unfit action is denied even if this step
is skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bus import Event
from rules import Diagnosis, Guard, Proposal, Topology

from .models import IncidentView, RootCause

DEPLOY, CONFIG = "rtem.change.deploy", "rtem.change.config"
DETERMINISTIC = "deterministic"  # who the deterministic reasoner's proposals say proposed them


def diagnosis_of(causes: Sequence[RootCause], events: Sequence[Event], topology: Topology) -> Diagnosis | None:
    """The top cause as the guard judges remedies against it; None when there is no cause in the topology."""
    if not causes or causes[0].entity not in topology:
        return None
    anomalies = Counter(e.subject for e in events if e.severity != "info" and e.subject in topology
                        and e.type not in (DEPLOY, CONFIG))
    return Diagnosis(
        cause=causes[0].entity, fault=causes[0].fault_type, signals=dict(anomalies),
        deployed=tuple(sorted({e.subject for e in events if e.type == DEPLOY and e.subject in topology})),
        changed=tuple(sorted({e.subject for e in events if e.type == CONFIG and e.subject in topology})))


def keep_fit(proposals: Sequence[Proposal], diagnosis: Diagnosis | None, topology: Topology, guard: Guard,
             remedies: Sequence[Proposal]) -> tuple[list[Proposal], list[str]]:
    """`proposals` with every one the deterministic reasoner did not make and that does not fit
    `diagnosis` left out; when any was left out, the deterministic `remedies` for the cause take the place
    of the left-out ones (those not already proposed). Notes say what was replaced and by which rule."""
    if diagnosis is None:
        return list(proposals), []
    kept: list[Proposal] = []
    notes: list[str] = []
    for proposal in proposals:
        unfit = [] if proposal.proposed_by == DETERMINISTIC else guard.unfit(proposal, topology, diagnosis)
        if unfit:
            notes.append(f"unfit proposal replaced: {proposal.type} on {proposal.target} ({proposal.proposed_by}): "
                         + "; ".join(f"{m.id}: {m.reason}" for m in unfit))
        else:
            kept.append(proposal)
    if not notes:
        return kept, []
    planned = {(p.type, p.target) for p in kept}
    added = [p for p in remedies if (p.type, p.target) not in planned and p.type != "notify_oncall"]
    notes.append("in their place, the deterministic remedies for the cause: "
                 + (", ".join(f"{p.type} on {p.target}" for p in added) or "none beyond those kept"))
    actions = [p for p in kept if p.type != "notify_oncall"] + added
    planned_text = ", ".join(f"{p.type} {p.target}" for p in actions) or "no automatic action"
    notify = [_retold(p, planned_text) for p in kept if p.type == "notify_oncall"]
    return actions + notify, notes


def _retold(page: Proposal, planned: str) -> Proposal:
    """A page whose summary named the replaced proposals, told what is planned instead."""
    summary = str(page.params.get("summary", ""))
    if not summary:
        return page
    note = f" [rtem replaced proposals that do not remedy the diagnosed cause; planned: {planned}.]"
    return page.model_copy(update={"params": {**page.params, "summary": (summary[:2000 - len(note)] + note)}})


def fit_remedies(guard: Guard, causes: Sequence[RootCause], view: IncidentView,
                 targets: set[str]) -> dict[str, list[str]] | None:
    """Which actions fit the diagnosis on which of `targets` (those of a type the action's contract
    accepts): what a model may choose among. None when there is no diagnosis to fit."""
    diagnosis = diagnosis_of(causes, view.events, view.topology)
    if diagnosis is None:
        return None
    fit: dict[str, list[str]] = {}
    for action, contract in sorted(guard.contracts.items()):
        chosen = [t for t in sorted(targets) if view.topology.entity_type(t) in contract.target_types
                  and not guard.unfit(Proposal(type=action, target=t), view.topology, diagnosis)]
        if chosen:
            fit[action] = chosen
    return fit
