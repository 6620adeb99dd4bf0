"""One checkable paragraph per candidate: what was seen, how distinctive it is, when, and why it ranks."""

from __future__ import annotations

from datetime import datetime, timezone

from ._catalog import FAULT_TYPES
from ._candidate import Candidate
from ._signals import CHANGE, TRACE

# How the population an entity is compared with is named (see `_scoring`, idea 1).
_UNITS = {"instance": "services' instances", "host": "hosts", "component": "components"}


def explain(cand: Candidate, incident_start: float | None) -> str:
    parts = [_what(cand)]
    distinctive = _distinctive(cand)
    if distinctive:
        parts.append(f"most distinctive: {distinctive}")
    when = _when(cand, incident_start)
    if when:
        parts.append(when)
    parts.extend(cand.notes)
    text = "; ".join(parts)
    meaning = FAULT_TYPES.get(cand.fault_type, "")
    return (f"{text}. Fault type {cand.fault_type}{f' ({meaning})' if meaning else ''}; score {cand.rank:.2f} "
            f"= evidence {cand.score:.2f} + level prior {cand.prior:.2f}.")


def _what(cand: Candidate) -> str:
    own = [s for _, s in cand.evidence if s.entity == cand.entity and s.source not in (TRACE, CHANGE)]
    if not own:
        return f"{cand.entity} ({cand.entity_type}) shows no anomaly of its own"
    domains = ", ".join(sorted({s.domain for s in own}))
    plural = "y" if len(own) == 1 else "ies"
    return f"{cand.entity} ({cand.entity_type}) shows {len(own)} anomal{plural} of its own ({domains})"


def _distinctive(cand: Candidate, limit: int = 3) -> str:
    units = _UNITS.get(cand.entity_type, _UNITS["component"])
    seen: list[str] = []
    for kind, spread, size in cand.kinds:
        entry = f"{kind} (anomalous on {spread} of {size} {units})"
        if entry not in seen:
            seen.append(entry)
    return ", ".join(seen[:limit])


def _when(cand: Candidate, incident_start: float | None) -> str:
    if cand.onset is None:
        return ""
    stamp = datetime.fromtimestamp(cand.onset, timezone.utc).strftime("%H:%M:%S")
    if incident_start is None:
        return f"first anomaly at {stamp}Z"
    lag = cand.onset - incident_start
    if lag < 1:
        return f"first anomaly at {stamp}Z, at the start of the incident"
    return f"first anomaly at {stamp}Z, {_duration(lag)} after the incident's first"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
