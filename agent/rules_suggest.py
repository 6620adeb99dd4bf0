"""`rtem rules suggest`: guardrail changes proposed from what people decided again and again.

People approve or reject the actions the guard held for them (`approval.decided` records; an approval
nobody gave in time is an `action.approval` record with status `expired`). When the same action on the
same kind of target (its type and service in the topology, or the target itself when the topology does
not know it) was approved at least `minimum` times and never rejected, the guardrails that asked for
approval each time (named by the `action.verdict` the approval answered) are narrowed to leave that
action and target kind out. When it was rejected as often and never approved, a deny rule for it is
added. Mixed decisions suggest nothing: people disagree, so a rule should not decide for them.

Each suggestion is a unified diff of the rule files with its evidence (the decision records' seqs and
hashes, who decided, counts) and why. Nothing is applied: a suggestion whose patched files would not
pass `rtem rules check` (checked here in memory with the same parser, analysis and compile) is not
offered. `suggest` is pure: records, topology, file texts and contracts in; the CLI reads and prints.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from rules import ActionContract, Topology

from .models import DecisionRecord
from .rules_text import CannotEdit, append_rule, check_texts, excludes, narrow, rules_in, unified_diff

DEFAULT_MINIMUM = 5
_LABEL = re.compile(r"#(\d+) (\S+) on (.+)")


class Decision(StrEnum):
    APPROVED = "approve"
    REJECTED = "reject"
    EXPIRED = "expired"


class Change(StrEnum):
    ALLOW = "allow_without_approval"
    DENY = "deny"


@dataclass(frozen=True)
class TargetKind:
    """What a group of decisions was about: an action on targets of one type in one service, or on one
    target the topology does not know."""

    action: str
    target_type: str | None = None
    target_service: str | None = None
    target: str | None = None  # only when the topology does not know the target

    def describe(self) -> str:
        if self.target is not None:
            return f"{self.action} on {self.target}"
        if self.target_type == "service" or self.target_type is None:
            return f"{self.action} on {self.target_service}"
        return f"{self.action} on {self.target_type}s of {self.target_service}"

    def match(self) -> dict[str, Any]:
        """The condition that holds for exactly this kind."""
        if self.target is not None:
            return {"action": self.action, "target": self.target}
        return {"action": self.action, "target_type": self.target_type, "target_service": self.target_service}

    def exclusion(self, match: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """`any` alternatives that hold for everything but this kind, beside `match`. A field the fact
        lacks makes every comparison false (docs/rules.md), so a target the topology does not know needs
        its own alternative, unless `match` already requires the topology to know the target."""
        if self.target is not None:
            return [{"action": {"ne": self.action}}, {"target": {"ne": self.target}}]
        unknown = [] if _needs_known_target(match or {}) else [{"target_type": {"exists": False}}]
        return [{"action": {"ne": self.action}}, *unknown,
                {"target_type": {"ne": self.target_type}}, {"target_service": {"ne": self.target_service}}]


def _needs_known_target(match: Mapping[str, Any]) -> bool:
    """Whether `match` holds only for targets in the topology: it tests a field taken from there."""
    return any(key in ("target_type", "target_service", "target_tier") or key.startswith("target_labels.")
               for key, value in match.items()
               if isinstance(key, str) and not (isinstance(value, Mapping) and "exists" in value))


@dataclass(frozen=True)
class HumanDecision:
    """One decision on one held action, and the verdict that held it (when recorded)."""

    seq: int
    record_hash: str
    at: datetime
    incident_id: str | None
    action: str
    target: str
    decision: Decision
    by: str
    held_by: tuple[str, ...] = ()  # the rules of the verdict the decision answered

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.record_hash[:16], "at": self.at.isoformat(),
                "incident_id": self.incident_id, "action": self.action, "target": self.target,
                "decision": self.decision.value, "by": self.by, "held_by": list(self.held_by)}


@dataclass
class Suggestion:
    change: Change
    kind: TargetKind
    rules: list[str]  # the rule ids narrowed, or the id of the deny rule added
    files: list[str]
    diff: str
    why: str
    evidence: list[HumanDecision]
    counts: dict[str, int]
    after: dict[str, str] = field(default_factory=dict, repr=False)  # the changed files' new texts

    @property
    def deciders(self) -> list[str]:
        return sorted({d.by for d in self.evidence if d.decision != Decision.EXPIRED})

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change.value, "about": self.kind.describe(), "kind": self.kind.match(),
                "rules": self.rules, "files": self.files, "why": self.why, "counts": self.counts,
                "deciders": self.deciders, "evidence": [d.to_dict() for d in self.evidence], "diff": self.diff}


@dataclass
class SuggestReport:
    decisions: int = 0
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # groups looked at and why they suggest nothing
    combined: str = ""  # every suggestion in one diff (each suggestion's own diff is against today's files)

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "suggestions": [s.to_dict() for s in self.suggestions],
                "notes": self.notes, "combined": self.combined}


def suggest(records: Iterable[DecisionRecord], topology: Topology, files: Mapping[str, str],
            contracts: Mapping[str, ActionContract], *, now: datetime, since: datetime | None = None,
            minimum: int = DEFAULT_MINIMUM) -> SuggestReport:
    """Suggestions from the decisions recorded at or after `since`. `files` maps each guardrail file's
    path relative to the rules directory (`guardrails/default.yaml`) to its text, in load order; the
    diffs use those paths (`patch -p1` in the rules directory applies them). `now` is for the check."""
    decisions = human_decisions(records, since)
    report = SuggestReport(decisions=len(decisions))
    groups: dict[TargetKind, list[HumanDecision]] = defaultdict(list)
    for decision in decisions:
        groups[kind_of(decision.action, decision.target, topology)].append(decision)
    for kind, group in groups.items():
        count = {d: sum(1 for x in group if x.decision == d) for d in Decision}
        approved, rejected = count[Decision.APPROVED], count[Decision.REJECTED]
        counts = {"approved": approved, "rejected": rejected, "expired": count[Decision.EXPIRED]}
        if (approved >= minimum and not rejected) or (rejected >= minimum and not approved):
            change = Change.ALLOW if approved else Change.DENY
            found = _CHANGES[change](kind, group, counts, files, contracts, now)
        else:
            if approved + rejected >= minimum:
                report.notes.append(f"{kind.describe()}: {approved} approved and {rejected} rejected; people "
                                    f"disagree, so no rule should decide for them")
            continue
        if isinstance(found, str):
            report.notes.append(f"{kind.describe()}: {found}")
        else:
            report.suggestions.append(found)
    report.combined = _combined(report.suggestions, files, contracts, now)
    return report


def _combined(suggestions: list[Suggestion], files: Mapping[str, str], contracts: Mapping[str, ActionContract],
              now: datetime) -> str:
    """One diff with every suggestion, each made on top of the ones before it (two that narrow the same
    rule would not apply one after the other as separate diffs). One that no longer fits is left out."""
    texts = dict(files)
    for item in suggestions:
        redone = _CHANGES[item.change](item.kind, item.evidence, item.counts, texts, contracts, now)
        if isinstance(redone, Suggestion):
            texts = {**texts, **redone.after}
    return unified_diff(files, texts)


def human_decisions(records: Iterable[DecisionRecord], since: datetime | None = None) -> list[HumanDecision]:
    """The approvals, rejections and expiries recorded at or after `since`, each with the rules of the
    verdict it answered (the latest `action.verdict` of that incident, action and target before it)."""
    verdicts: dict[tuple[str | None, str, str], tuple[str, ...]] = {}
    found: list[HumanDecision] = []
    for record in sorted(records, key=lambda r: r.seq):
        if record.kind == "action.verdict":
            proposal = record.inputs.get("proposal") or {}
            key = (record.incident_id, str(proposal.get("type")), str(proposal.get("target")))
            verdicts[key] = tuple(record.decision.get("rules") or ())
            continue
        parsed = _decision(record)
        if parsed is None or (since is not None and record.at < since):
            continue
        action, target, decision, by = parsed
        found.append(HumanDecision(record.seq, record.hash, record.at, record.incident_id, action, target, decision,
                                   by, verdicts.get((record.incident_id, action, target), ())))
    return found


def _decision(record: DecisionRecord) -> tuple[str, str, Decision, str] | None:
    if record.kind == "approval.decided":
        action = record.inputs.get("action") or {}
        value = record.decision.get("decision")
        if value not in (Decision.APPROVED, Decision.REJECTED) or not action.get("type"):
            return None
        return str(action["type"]), str(action.get("target")), Decision(value), str(record.decision.get("by", "?"))
    if record.kind == "action.approval" and record.decision.get("status") == "expired":
        label = _LABEL.fullmatch(str(record.inputs.get("action", "")))
        return (label[2], label[3], Decision.EXPIRED, str(record.decision.get("by", "rtem"))) if label else None
    return None


def kind_of(action: str, target: str, topology: Topology) -> TargetKind:
    entity = topology.by_id.get(target)
    if entity is None:
        return TargetKind(action, target=target)
    return TargetKind(action, entity.type, topology.service_of(entity.id))


# -- the two kinds of change ----------------------------------------------------------------------

def _allow(kind: TargetKind, group: list[HumanDecision], counts: dict[str, int], files: Mapping[str, str],
           contracts: Mapping[str, ActionContract], now: datetime) -> Suggestion | str:
    held = {rule for d in group if d.decision == Decision.APPROVED for rule in d.held_by}
    if "contract.approval" in held:
        return (f"the contract of {kind.action} itself asks for approval; a guardrail cannot lift that "
                f"(change approver_role or risk in contracts/{kind.action}.json if you mean to)")
    located = rules_in(files)
    asking = sorted(r for r in held if r in located and located[r][2].outcome == "require_approval")
    narrowed = [r for r in asking if not excludes(located[r][2].match, kind.exclusion(located[r][2].match))]
    if not narrowed:
        return (f"{', '.join(asking)} already leave{'s' * (len(asking) == 1)} it out" if asking else
                "no guardrail in the current files asks for approval of it any more" if held else
                "the verdicts these approvals answered are not in the audit log")
    approvals = [d for d in group if d.decision == Decision.APPROVED]
    note = (f"rtem rules suggest: {kind.describe()} left out; approved {len(approvals)} times, never rejected "
            f"(audit seqs {', '.join(str(d.seq) for d in approvals)})")
    texts = dict(files)
    for rule_id in narrowed:
        name, index, rule = located[rule_id]
        try:
            texts[name] = narrow(texts[name], index, kind.exclusion, note)
        except CannotEdit as exc:
            return f"{rule_id} ({name}:{rule.line}) cannot be edited automatically: {exc}"
    who = ", ".join(sorted({d.by for d in approvals}))
    expired = f"; {counts['expired']} more expired undecided" if counts["expired"] else ""
    why = (f"{who} approved {kind.describe()} {len(approvals)} times between {_day(approvals[0].at)} and "
           f"{_day(approvals[-1].at)} and nobody rejected it{expired}; {', '.join(narrowed)} asked for approval "
           f"each time, so narrowing {'it' if len(narrowed) == 1 else 'them'} lets rtem act without asking.")
    return _checked(Change.ALLOW, kind, narrowed, files, texts, why, group, counts, contracts, now)


def _deny(kind: TargetKind, group: list[HumanDecision], counts: dict[str, int], files: Mapping[str, str],
          contracts: Mapping[str, ActionContract], now: datetime) -> Suggestion | str:
    if not files:
        return "there is no guardrail file to add a rule to"
    located = rules_in(files)
    already = [r for r, (_, _, rule) in located.items()
               if rule.outcome == "deny" and rule.match == kind.match() and not rule.gates]
    if already:
        return f"{already[0]} already denies it"
    held = [r for d in group for r in d.held_by if r in located]
    name = located[held[0]][0] if held else next(iter(files))  # beside the rule that held it, if any
    rule_id = _fresh_id("suggested-deny-" + "-".join(
        str(v) for v in (kind.action, kind.target or kind.target_service, kind.target_type) if v), located)
    rejections = [d for d in group if d.decision == Decision.REJECTED]
    who = ", ".join(sorted({d.by for d in rejections}))
    rule = {"id": rule_id,
            "description": f"People rejected {kind.describe()} every time rtem asked "
                           f"({len(rejections)} times, rtem rules suggest).",
            "match": kind.match(), "outcome": "deny",
            "reason": f"People rejected {kind.describe()} every time it was proposed; rtem does not ask again."}
    try:
        text = append_rule(files[name], rule)
    except CannotEdit as exc:
        return f"cannot add a rule to {name} automatically: {exc}"
    why = (f"{who} rejected {kind.describe()} {len(rejections)} times between {_day(rejections[0].at)} and "
           f"{_day(rejections[-1].at)} and nobody approved it; a deny rule stops rtem asking for it again.")
    return _checked(Change.DENY, kind, [rule_id], files, {**files, name: text}, why, group, counts, contracts, now)


def _checked(change: Change, kind: TargetKind, rules: list[str], before: Mapping[str, str],
             after: Mapping[str, str], why: str, group: list[HumanDecision], counts: dict[str, int],
             contracts: Mapping[str, ActionContract], now: datetime) -> Suggestion | str:
    errors = check_texts(after, contracts, now)
    if errors:
        return f"the change would not pass `rtem rules check` ({errors[0]}); not suggested"
    changed = [name for name in before if before[name] != after[name]]
    return Suggestion(change, kind, rules, changed, unified_diff(before, after), why, group, counts,
                      {name: after[name] for name in changed})


_CHANGES = {Change.ALLOW: _allow, Change.DENY: _deny}


def _fresh_id(base: str, taken: Mapping[str, Any]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", base)[:120]
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _day(at: datetime) -> str:
    return at.isoformat(timespec="minutes").replace("+00:00", "Z")
