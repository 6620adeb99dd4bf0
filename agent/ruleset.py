"""The rule set in force, as the graph and triage read it: one `RuleSnapshot` behind `current()`.

Components are built once around a `RuleSource`; nothing is rewired when rules change. `FixedRules`
holds the set loaded at start (`rtem analyze`, tests); `RulesReloader` (agent/rules_reload.py)
replaces its snapshot in one assignment when the files change, so every reader sees one complete
set: a verdict's guard and contract, and triage's detections, always come from the same snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

from rules import DetectionSet, Guard, load_contracts, load_detections, load_guardrails, rules_digest


class RuleSnapshot(NamedTuple):
    """One complete rule set: the guard (guardrails and contracts, bound to the action history and
    system state), the detections triage runs, and the digest of the whole."""

    guard: Guard
    detections: DetectionSet
    digest: str

    @property
    def versions(self) -> dict[str, str]:
        """What a decision record names as the rules it was judged by."""
        return {"ruleset": self.guard.guardrails.digest, "detections": self.detections.digest, "rules": self.digest}


class RuleSource(Protocol):
    def current(self) -> RuleSnapshot: ...
    def close(self) -> None: ...


class FixedRules:
    """The rules loaded once; a bad file raises `RulesError` at its file:line."""

    def __init__(self, snapshot: RuleSnapshot):
        self._snapshot = snapshot

    @classmethod
    def load(cls, rules_dir: Path | None, *, history=None, state=None) -> FixedRules:
        detections = load_detections(rules_dir / "detect" if rules_dir else None)
        guardrails = load_guardrails(rules_dir / "guardrails" if rules_dir else None)
        contracts = load_contracts(rules_dir / "contracts" if rules_dir else None)
        guard = Guard(guardrails, contracts, history=history, state=state)
        return cls(RuleSnapshot(guard, detections, rules_digest(guardrails, contracts, detections)))

    def current(self) -> RuleSnapshot:
        return self._snapshot

    def close(self) -> None:
        self._snapshot.guard.close()
