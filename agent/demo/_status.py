"""What `rtem demo` shows at one moment, as data: a `Frame` built from the store, the simulation and the
demo operator, with no terminal in sight. `_live.py` draws it; tests read it directly.

A frame also says what the demo is waiting for and until when (`Wait`): the second wave of disruptions
begins a minute of wall time after the first one is fixed, and without a word the screen looks stuck.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..incident import FINAL as FINAL_STATUSES
from ..models import share_text

FINAL = frozenset(status.value for status in FINAL_STATUSES)  # the incident model's, as the rows spell them

# Verdicts and statuses as a reader says them; the raw value is kept where it is already plain English.
VERDICT_WORDS = {"allow": "allowed", "require_approval": "needs approval", "deny": "denied"}


@dataclass(frozen=True)
class Timeline:
    """Maps the simulation's event seconds to the demo's wall seconds (the header's `wall` timer).

    `offset_s` is the wall second at which event second 0 happened: event time runs `speed` times faster."""

    speed: float
    offset_s: float
    start: datetime

    def wall_s(self, event_s: float) -> float:
        return self.offset_s + event_s / self.speed

    def sim_time(self, event_s: float) -> datetime:
        return self.start + timedelta(seconds=event_s)

    def event_s(self, epoch_s: float) -> float:
        """Event seconds since the start of an event-time stamp (incidents' first_ts / last_ts)."""
        return epoch_s - self.start.timestamp()


@dataclass(frozen=True)
class ActionLine:
    type: str
    target: str
    verdict: str
    status: str

    def text(self) -> str:
        return f"{self.type} {self.target}: {self.outcome()}"

    def outcome(self) -> str:
        """The guard's verdict, then where the action is now: "needs approval → done"."""
        verdict = VERDICT_WORDS.get(self.verdict, self.verdict.replace("_", " "))
        return f"{verdict} → {self.status.replace('_', ' ') or 'pending'}"


@dataclass(frozen=True)
class IncidentLine:
    id: str
    status: str
    cause: str  # "auth-1 (process 0.91)", or "" before diagnosis
    actions: tuple[ActionLine, ...]
    cause_entity: str = ""  # "auth-1": what a narrow display shows

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def status_text(self) -> str:
        return self.status.replace("_", " ")  # "awaiting approval" wraps in a narrow column; the raw one cannot


@dataclass(frozen=True)
class FaultLine:
    name: str
    target: str
    status: str  # scheduled, active, recovering, resolved (sim.Fault.status)

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"


@dataclass(frozen=True)
class Wait:
    """Something the demo is waiting for; `until_wall_s` on the demo's wall timer, `until_sim` in event time."""

    what: str
    until_wall_s: float | None = None
    until_sim: datetime | None = None

    def text(self) -> str:
        if self.until_wall_s is None:
            return f"waiting for {self.what}"
        sim = f", sim {self.until_sim:%H:%M:%S}" if self.until_sim else ""
        return f"waiting for {self.what} until ~{self.until_wall_s:.0f}s wall{sim}"


@dataclass(frozen=True)
class Frame:
    wall_s: float
    sim_now: datetime
    incidents: tuple[IncidentLine, ...]
    faults: tuple[FaultLine, ...]
    approvals: int
    waits: tuple[Wait, ...]

    def header(self) -> str:
        resolved = sum(f.resolved for f in self.faults)
        return (f"rtem demo · wall {self.wall_s:5.1f}s · sim {self.sim_now:%H:%M:%S} · "
                f"faults {resolved}/{len(self.faults)} resolved · approvals {self.approvals}")


def build_frame(*, wall_s: float, sim_now_s: float, timeline: Timeline, incidents: Iterable[Mapping[str, Any]],
                faults: Iterable[Any], approvals: int, asked: Mapping[str, float], approve_after_s: float,
                verify_quiet_s: float, diagnose_after_s: float = 20.0) -> Frame:
    """One moment of the demo. `faults` are `sim.Fault`s; `asked` maps an incident id awaiting approval to
    the wall second the demo operator first saw it (it approves `approve_after_s` later)."""
    rows = list(incidents)
    faults = list(faults)
    lines = tuple(_incident_line(row) for row in rows)
    fault_lines = tuple(FaultLine(f.scenario.name, f.scenario.target, f.status) for f in faults)
    waits = tuple(_waits(rows, faults, timeline, asked, approve_after_s, verify_quiet_s, diagnose_after_s))
    return Frame(wall_s=wall_s, sim_now=timeline.sim_time(sim_now_s), incidents=lines, faults=fault_lines,
                 approvals=approvals, waits=waits)


def _incident_line(row: Mapping[str, Any]) -> IncidentLine:
    top = row["root_causes"][0] if row.get("root_causes") else None
    cause = f"{top['entity']} ({top['fault_type']} {share_text(top['confidence'])})" if top else ""
    actions = tuple(ActionLine(a["type"], a["target"], str(a.get("verdict") or ""), str(a.get("status") or ""))
                    for a in row.get("actions") or [])
    return IncidentLine(row["id"], row["status"], cause, actions, top["entity"] if top else "")


def _waits(rows, faults, timeline: Timeline, asked: Mapping[str, float], approve_after_s: float,
           verify_quiet_s: float, diagnose_after_s: float) -> list[Wait]:
    """Most immediate first: the operator, verification, diagnosis, detection, recovery, the next wave."""
    waits: list[Wait] = []
    for row in rows:
        if row["status"] == "awaiting_approval":
            pending = [f"{a['type']} {a['target']}" for a in row.get("actions") or []
                       if a.get("status") == "awaiting_approval"]
            seen = asked.get(row["id"])
            waits.append(Wait(f"the operator to approve {', '.join(pending) or 'an action'} ({row['id']})",
                              None if seen is None else seen + approve_after_s))
    for row in rows:
        if row["status"] == "verifying":
            quiet_s = timeline.event_s(row["last_ts"]) + verify_quiet_s
            waits.append(Wait(f"{row['id']} to stay quiet for {verify_quiet_s:.0f}s of event time (verifying the fix)",
                              timeline.wall_s(quiet_s), timeline.sim_time(quiet_s)))
    for row in rows:
        if row["status"] in ("open", "diagnosing"):
            due_s = timeline.event_s(row["first_ts"]) + diagnose_after_s
            waits.append(Wait(f"{row['id']} to gather evidence before its diagnosis", timeline.wall_s(due_s),
                              timeline.sim_time(due_s)))
    for fault in faults:
        if fault.status == "active" and fault.scenario.kind == "malformed_burst":
            count = fault.scenario.params.get("count", 0)
            waits.append(Wait(f"the DLQ to hold all {count} malformed records ({len(fault.dead_lettered)} so far)"))
        elif fault.status == "active" and not any(_shows(row, fault, timeline) for row in rows):
            waits.append(Wait(f"rtem to detect {fault.scenario.name} on {fault.scenario.target}"))
        elif fault.status == "recovering" and fault.clear_s is not None:
            waits.append(Wait(f"{fault.scenario.target} to recover from {fault.scenario.name}",
                              timeline.wall_s(fault.clear_s), timeline.sim_time(fault.clear_s)))
    scheduled = sorted((f for f in faults if f.status == "scheduled"), key=lambda f: f.start_s)
    if scheduled:
        first, later = scheduled[0], len(scheduled) - 1
        what = "the next disruption" if any(f.status != "scheduled" for f in faults) else "the first disruption"
        then = f" (then {later} more)" if later else ""
        waits.append(Wait(f"{what}: {first.scenario.name} on {first.scenario.target}{then}",
                          timeline.wall_s(first.start_s), timeline.sim_time(first.start_s)))
    return waits


def _shows(row: Mapping[str, Any], fault: Any, timeline: Timeline) -> bool:
    """Whether an incident is (likely) the one this fault caused: it names the faulty entity or one of its
    instances ("fulfillment" → "fulfillment-0"), or it opened once the fault had begun."""
    entities = row.get("entities") or []
    entities = {entities} if isinstance(entities, str) else set(entities)
    entities |= {c["entity"] for c in row.get("root_causes") or []}
    target = fault.scenario.target
    if any(e == target or e.startswith(f"{target}-") for e in entities):
        return True
    return fault.began_s is not None and "first_ts" in row and timeline.event_s(row["first_ts"]) >= fault.began_s


# -- plain progress (no terminal): one line per change ------------------------------------------------


def progress_lines(before: Frame | None, now: Frame) -> list[str]:
    """What changed from `before` to `now`, one plain line each (no markup, no escape codes)."""
    stamp = f"[{now.wall_s:6.1f}s]"
    lines = []
    old_incidents = {i.id: i for i in before.incidents} if before else {}
    for incident in now.incidents:
        if old_incidents.get(incident.id) != incident:
            actions = "; ".join(a.text() for a in incident.actions) or "none yet"
            cause = f" · cause {incident.cause}" if incident.cause else ""
            lines.append(f"{stamp} {incident.id} {incident.status_text()}{cause} · actions: {actions}")
    old_faults = {(f.name, f.target): f.status for f in before.faults} if before else {}
    for fault in now.faults:
        if old_faults.get((fault.name, fault.target)) != fault.status:
            lines.append(f"{stamp} fault {fault.name} on {fault.target}: {fault.status}")
    # By what is awaited, not until when: a verifying incident's deadline moves with every new signal.
    old_waits = {w.what for w in before.waits} if before else set()
    lines += [f"{stamp} {w.text()}" for w in now.waits if w.what not in old_waits]
    return lines
