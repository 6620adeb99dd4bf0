"""What every destination is told about one incident: a `Notice`, built from the store's row and the
incident's audit records, the same whichever destination sends it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bus import parse_time
from rules import Topology

from ..incident import ActionStatus, Incident, IncidentStatus
from ..models import DecisionRecord


class NoticeEvent(StrEnum):
    TRIGGER = "trigger"  # a person should look: diagnosed, awaiting approval, escalated, failed
    ACKNOWLEDGE = "acknowledge"  # a person is on it: pagers stop re-paging
    RESOLVE = "resolve"  # over: resolved, merged, or closed by a person


# Statuses after which a person is no longer needed: the alert resolves. Escalated and failed are final
# for rtem's graph, but they are exactly when a person must act, so they page.
RESOLVING = frozenset({IncidentStatus.RESOLVED, IncidentStatus.MERGED, IncidentStatus.DIAGNOSED})
REPORT_PATH = "/api/v1/incidents/{id}/report?format=html"
CONSOLE_PATH = "/incidents/{id}"


@dataclass(frozen=True)
class Notice:
    """One incident as destinations see it. `receivers` names the destinations to use (`alertmanager`,
    `webhook`, `pagerduty`, `slack`); empty means every configured one. `oncall` names whom a page is
    for (people, rotations), for destinations that route by it."""

    incident_id: str
    event: NoticeEvent
    status: str
    severity: str
    service: str
    root_cause: str
    fault_type: str
    summary: str
    cause: str
    opened_at: datetime
    proposed_actions: tuple[str, ...] = ()
    executed_actions: tuple[str, ...] = ()
    awaiting_approval: tuple[str, ...] = ()
    console_url: str | None = None
    report_url: str | None = None
    receivers: tuple[str, ...] = ()
    oncall: tuple[str, ...] = ()  # the people or rotations a page is for (`rotation:payments`), as told

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the webhook sends (and a receiver reads)."""
        data = asdict(self)
        data.update(event=self.event.value, opened_at=self.opened_at.isoformat(),
                    proposed_actions=list(self.proposed_actions), executed_actions=list(self.executed_actions),
                    awaiting_approval=list(self.awaiting_approval), receivers=list(self.receivers),
                    oncall=list(self.oncall))
        return data


def event_for(status: str) -> NoticeEvent:
    """What a status means for the people paged: a resolving status resolves, any other triggers."""
    return NoticeEvent.RESOLVE if status in RESOLVING else NoticeEvent.TRIGGER


def notice_from_incident(row: dict[str, Any], records: Sequence[DecisionRecord] = (), *,
                         event: NoticeEvent | None = None, public_url: str | None = None,
                         topology: Topology | None = None, receivers: Sequence[str] = ()) -> Notice:
    """The notice of one incident: its store row (decoded, as `IncidentStore.incident` returns it) and its
    audit records, which say why it escalated or failed. `event` defaults to what its status means."""
    incident = Incident.from_row(row)
    top = incident.root_causes[0] if incident.root_causes else None
    entity = top.entity if top else (incident.entities[0] if incident.entities else "")
    service = _service_of(entity, topology)
    status = incident.status.value
    cause = (f"{top.entity} ({top.fault_type}, share {top.share}): {top.explanation}".strip(": ")
             if top else "not diagnosed yet")
    why = _why(incident, records)
    subject = f"{top.entity} ({top.fault_type})" if top else f"not diagnosed yet ({entity or 'no entity'})"
    where = f" in {service}" if service and service != subject.split(" ")[0] else ""
    summary = f"rtem incident {incident.id} [{incident.severity}, {status}]: {subject}{where}" + \
        (f": {why}" if why else "")
    base = public_url.rstrip("/") if public_url else None
    return Notice(
        incident_id=incident.id, event=event or event_for(status), status=status, severity=incident.severity,
        service=service, root_cause=top.entity if top else "", fault_type=top.fault_type if top else "",
        summary=summary[:1000], cause=cause[:2000], opened_at=parse_time(incident.opened_at),
        proposed_actions=tuple(a.label for a in incident.actions if not a.executed),
        executed_actions=tuple(a.label for a in incident.actions if a.executed),
        awaiting_approval=tuple(a.label for a in incident.actions if a.status == ActionStatus.AWAITING_APPROVAL),
        console_url=base + CONSOLE_PATH.format(id=incident.id) if base else None,
        report_url=base + REPORT_PATH.format(id=incident.id) if base else None,
        receivers=tuple(receivers))


def _service_of(entity: str, topology: Topology | None) -> str:
    """The service an entity belongs to: itself when it is one, else what it is an instance of."""
    if not entity or topology is None:
        return ""
    if topology.entity_type(entity) == "service":
        return entity
    services = topology.targets(entity, "instance_of")
    return services[0] if services else ""


def _why(incident: Incident, records: Sequence[DecisionRecord]) -> str:
    """Why a person is needed, from the records: the resolution of an escalation, the last failure."""
    if incident.status == IncidentStatus.FAILED:
        failed = [r for r in records if r.kind == "incident.failed"]
        return failed[-1].reasons[0] if failed and failed[-1].reasons else "rtem failed on it"
    if incident.status == IncidentStatus.ESCALATED:
        return incident.resolution or "escalated to a person"
    if incident.status == IncidentStatus.AWAITING_APPROVAL:
        return "an action awaits approval"
    return incident.resolution or ""
