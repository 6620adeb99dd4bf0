"""Paging: incidents told to Alertmanager and to direct notifiers (a signed webhook, PagerDuty, Slack).

    notifications = build_notifications(settings, audit)          # once, from RTEM_* settings
    deliveries = await notifications.notify(notice_from_incident(row, records, public_url=...))
    pager = IncidentPager(notifications, store, audit, ...)       # what `rtem run` sends as incidents move

Every delivery is retried, behind a breaker per endpoint, and audited (`notification.sent` /
`notification.failed`); none raises into the caller. docs/integrations.md has the configuration.
"""

from ._deliver import Delivery, Notifications, build_notifications
from ._destinations import DIRECT, Alertmanager, Destination, DestinationName, PagerDuty, Request, Slack, Webhook
from ._notice import Notice, NoticeEvent, event_for, notice_from_incident
from ._pager import Due, IncidentPager, Sent, due
from ._payloads import ALERTNAME, alertmanager_alerts, pagerduty_event, slack_message, webhook_body

__all__ = ["ALERTNAME", "DIRECT", "Alertmanager", "Delivery", "Destination", "DestinationName", "Due",
           "IncidentPager", "Notice", "NoticeEvent", "Notifications", "PagerDuty", "Request", "Sent", "Slack",
           "Webhook", "alertmanager_alerts", "build_notifications", "due", "event_for", "notice_from_incident",
           "pagerduty_event", "slack_message", "webhook_body"]
