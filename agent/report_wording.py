"""Sentences of the rationale report that need more than a template: reasons said once, who must approve,
what the event and signal counts mean, and how the two clocks relate.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Reason", "approver_text", "merge_reasons", "signals_text", "split_reasons"]

# A contract that rates an action high risk requires approval itself (rule `contract.approval`), and the
# packaged guardrail `high-risk-needs-approval` matches the same risk level: two rules, one ground. Reasons
# that name the same risk level are that one ground, said twice.
_RISK = re.compile(r"\(?\b(?:rated\s+)?(low|medium|high|critical)[- ]risk\b\)?", re.IGNORECASE)

_CONTRACT_TEXT = re.compile(r"the \S+ contract \(")  # rules/_guard.py's wording for `contract.approval`


@dataclass(frozen=True)
class Reason:
    """One ground for a verdict, in the words of the rule that states it best, with every rule that gave it."""

    text: str
    rules: tuple[str, ...]


def merge_reasons(rules: Sequence[str], reasons: Sequence[str]) -> list[Reason]:
    """The reasons of one verdict, each ground once: identical sentences merge, and sentences that give the
    same risk level as their ground merge into the guardrail's wording (a guardrail's reason is written by
    a person for people; the contract's is generated). `rules[i]` gave `reasons[i]` when the lists pair up."""
    paired = list(zip(rules, reasons)) if len(rules) == len(reasons) else [("", r) for r in reasons]
    merged: dict[str, tuple[str, list[str]]] = {}
    for rule, text in paired:
        text = text.strip()
        if not text:
            continue
        key = _ground(text)
        if key not in merged:
            merged[key] = (text, [rule] if rule else [])
            continue
        kept, kept_rules = merged[key]
        if rule and rule not in kept_rules:
            kept_rules.append(rule)
        if _CONTRACT_TEXT.match(kept) and not _CONTRACT_TEXT.match(text):
            kept = text  # prefer the guardrail's sentence
        merged[key] = (kept, kept_rules)
    return [Reason(text, tuple(rules_)) for text, rules_ in merged.values()]


def split_reasons(joined: str) -> list[str]:
    """A reason stored as one string of `; `-joined reasons (an approval request's), said once each."""
    parts = [p.strip() for p in re.split(r";\s+(?=[A-Za-z])", joined) if p.strip()]
    # "; " also occurs inside one sentence ("…high risk; a person must approve it."): a part that starts in
    # lower case continues the sentence before it unless that part is a whole reason of its own.
    sentences: list[str] = []
    for part in parts:
        if sentences and part[:1].islower() and not _RISK.search(part) and not part.startswith("the "):
            sentences[-1] = f"{sentences[-1]}; {part}"
        else:
            sentences.append(part)
    return [r.text for r in merge_reasons([], sentences)]


def approver_text(role: str | None) -> str:
    """Who may decide an action waiting for approval: its role, or an admin (the API accepts either)."""
    role = role or "approver"
    return "an admin" if role == "admin" else f"a person with the role {role} (or an admin)"


def signals_text(event_count: int, signal_count: int, per_event: Sequence[Sequence[str]]) -> dict[str, Any]:
    """What "N events, M signals" means for this incident: a signal is one detection rule firing on one
    event, so one event can raise several signals and many raise none. `per_event` holds, for each stored
    event, the detections it raised."""
    raised = Counter(d for detections in per_event for d in detections)
    several = sum(1 for detections in per_event if len(detections) > 1)
    quiet = sum(1 for detections in per_event if not detections)
    parts = [f"{event_count} events correlated into this incident"]
    if len(per_event) != event_count:
        parts.append(f"{len(per_event)} of them still stored")
    detail = []
    if several:
        detail.append(f"{several} event{'s' if several != 1 else ''} matched more than one detection")
    if quiet:
        detail.append(f"{quiet} matched none: context such as samples, changes or logs")
    signals = (f"{signal_count} detection signals, one per detection rule that fired on an event"
               + (f" ({'; '.join(detail)})" if detail else ""))
    by_detection = ", ".join(f"{name} {count}" for name, count in sorted(raised.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"events": "; ".join(parts), "signals": signals, "by_detection": by_detection}


def _ground(text: str) -> str:
    risk = _RISK.search(text)
    if risk and "approv" in text.lower():
        return f"risk:{risk.group(1).lower()}"
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
