"""Recording an investigation: its evidence events in the store, attached to the incident, and one
`context.gathered` decision record saying which queries ran, what they found and what failed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from ..audit import AuditLog
from ..store import IncidentStore, event_row
from ._investigator import Investigation

GATHERED = "context.gathered"


def record(investigation: Investigation, store: IncidentStore, audit: AuditLog, *, prometheus: str,
           queries: str, versions: Mapping[str, str]) -> int:
    """Store the new evidence events (one transaction) and append the decision record; returns how
    many events were new. Evidence events carry no detection signal, so they never open, extend or
    keep open an incident, and recovery is still judged on the pushed events alone."""
    incident_id = investigation.incident_id
    known = store.known_ids([e.id for e in investigation.events])
    received = datetime.now(timezone.utc).isoformat()
    rows = [event_row(e, incident_id, (), received) for e in investigation.events if e.id not in known]
    if rows:
        with store.transaction():
            store.insert_events(rows)
            store.add_events(incident_id, len(rows))
    outcomes = investigation.outcomes
    anomalies = [f"{o.entity} {o.template} = {o.peak:g}" for o in outcomes if o.anomalous and o.peak is not None]
    failures = [f"{o.entity} {o.template}: {o.error}" for o in investigation.failures]
    reasons = ([f"{len(outcomes)} Prometheus queries ran, {len(anomalies)} anomalous, {len(failures)} failed"]
               + [f"anomalous: {a}" for a in anomalies] + [f"failed: {f}" for f in failures[:5]]
               + investigation.skipped)
    window = investigation.window
    audit.append(
        GATHERED, incident_id=incident_id, node="gather_context",
        inputs={"prometheus": prometheus, "queries": queries,
                "window": {"start": _iso(window.start), "end": _iso(window.end)} if window else None},
        decision={"queries": [o.to_dict() for o in outcomes],
                  "series": sum(o.series for o in outcomes), "anomalous": anomalies,
                  "failures": failures, "skipped": investigation.skipped, "events": len(investigation.events)},
        reasons=reasons, evidence=[e.id for e in investigation.events], versions=dict(versions))
    return len(rows)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()
