"""What each destination is sent for one `Notice`: pure functions, the clock passed in, no I/O.

Shapes follow each receiver's documentation: Alertmanager's v2 API (`postableAlerts`), PagerDuty's Events
API v2 (`/v2/enqueue`), Slack's incoming webhooks (`text` + Block Kit `blocks`), and rtem's own signed
webhook (the notice as JSON, agent/signing.py).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from ._notice import Notice, NoticeEvent

ALERTNAME = "RtemIncident"
ALERT_LIFETIME_REFRESHES = 3  # an open incident's alert ends by itself this many refreshes after the last post
PAGERDUTY_SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}
PAGERDUTY_SOURCE = "rtem"
SLACK_TEXT_LIMIT = 3000  # a section block's text is at most 3000 characters


def alertmanager_alerts(notice: Notice, now: datetime, refresh_s: float) -> list[dict[str, Any]]:
    """The incident as one Alertmanager alert. While it is open, `endsAt` lies a few refreshes ahead, so
    the alert resolves by itself if rtem stops posting (a dead rtem pages nobody forever); a resolve
    ends it now. Labels identify the alert (and group it); empty values are left out, since Alertmanager
    treats an empty label as an absent one."""
    labels = {"alertname": ALERTNAME, "incident": notice.incident_id, "severity": notice.severity,
              "service": notice.service, "root_cause": notice.root_cause}
    annotations = {"summary": notice.summary, "cause": notice.cause, "status": notice.status,
                   "proposed_actions": ", ".join(notice.proposed_actions),
                   "executed_actions": ", ".join(notice.executed_actions),
                   "console_url": notice.console_url or "", "report_url": notice.report_url or "",
                   "oncall": ", ".join(notice.oncall)}
    ends = now if notice.event == NoticeEvent.RESOLVE else now + timedelta(seconds=refresh_s * ALERT_LIFETIME_REFRESHES)
    alert: dict[str, Any] = {
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": {k: v for k, v in annotations.items() if v},
        # event time may run ahead of this clock; Alertmanager refuses an alert that ends before it starts
        "startsAt": _rfc3339(min(notice.opened_at, now)), "endsAt": _rfc3339(ends)}
    if notice.console_url:
        alert["generatorURL"] = notice.console_url
    return [alert]


def pagerduty_event(notice: Notice, routing_key: str, now: datetime) -> dict[str, Any]:
    """A PagerDuty Events API v2 alert event. `dedup_key` is the incident id, so acknowledge and resolve
    reach the alert the trigger opened; acknowledge and resolve carry no payload (PagerDuty ignores it)."""
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": notice.event.value,
                             "dedup_key": notice.incident_id}
    if notice.event != NoticeEvent.TRIGGER:
        return event
    event["payload"] = {
        "summary": notice.summary[:1024], "source": notice.root_cause or notice.service or PAGERDUTY_SOURCE,
        "severity": PAGERDUTY_SEVERITY.get(notice.severity, "error"), "timestamp": _rfc3339(now),
        "component": notice.root_cause or None, "group": notice.service or None, "class": notice.fault_type or None,
        "custom_details": {"incident": notice.incident_id, "status": notice.status, "cause": notice.cause,
                           "proposed_actions": list(notice.proposed_actions),
                           "executed_actions": list(notice.executed_actions),
                           "awaiting_approval": list(notice.awaiting_approval), "oncall": list(notice.oncall)}}
    event["payload"] = {k: v for k, v in event["payload"].items() if v is not None}
    event["client"] = "rtem"
    if notice.console_url:
        event["client_url"] = notice.console_url
    links = [{"href": url, "text": text} for url, text in ((notice.console_url, "Incident in the rtem console"),
                                                          (notice.report_url, "Rationale report")) if url]
    if links:
        event["links"] = links
    return event


def slack_message(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (shown in notifications and by clients without blocks)
    and Block Kit `blocks` with the cause, the actions, and the approval link when an action waits."""
    head = {NoticeEvent.TRIGGER: ":rotating_light:", NoticeEvent.ACKNOWLEDGE: ":eyes:",
            NoticeEvent.RESOLVE: ":white_check_mark:"}[notice.event]
    text = f"{head} {_slack_escape(notice.summary)}"
    fields = [f"*Cause:* {notice.cause}"]
    if notice.proposed_actions:
        fields.append("*Proposed:* " + ", ".join(notice.proposed_actions))
    if notice.executed_actions:
        fields.append("*Executed:* " + ", ".join(notice.executed_actions))
    if notice.awaiting_approval:
        fields.append("*Awaiting approval:* " + ", ".join(notice.awaiting_approval))
    if notice.oncall:
        fields.append("*Paging:* " + ", ".join(notice.oncall))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:SLACK_TEXT_LIMIT]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape("\n".join(fields))[:SLACK_TEXT_LIMIT]}}]
    buttons = []
    if notice.console_url:
        label = "Approve or reject" if notice.awaiting_approval else "Open incident"
        buttons.append({"type": "button", "text": {"type": "plain_text", "text": label},
                        "url": notice.console_url, **({"style": "primary"} if notice.awaiting_approval else {})})
    if notice.report_url:
        buttons.append({"type": "button", "text": {"type": "plain_text", "text": "Report"}, "url": notice.report_url})
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": text, "blocks": blocks}


def webhook_body(notice: Notice) -> bytes:
    """The signed webhook's body: the notice as compact JSON, keys sorted (the signature covers these bytes)."""
    return json.dumps(notice.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def _rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _slack_escape(text: str) -> str:
    """Slack reads `&`, `<` and `>` as markup (links, mentions): an event's text must not ping @channel."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
