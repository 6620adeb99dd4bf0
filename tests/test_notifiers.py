"""The direct notifiers: payload shapes (pure, fast), then each destination against a local server that
checks the documented shape — the signed webhook, PagerDuty's Events API v2, a Slack incoming webhook —
with retries, the breaker, the audit records, and no secret anywhere in records or logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from agent import signing
from agent.audit import AuditLog
from agent.config import Settings
from agent.notify import (Due, NoticeEvent, Notifications, PagerDuty, Sent, Slack, Webhook, alertmanager_alerts,
                          build_notifications, due, notice_from_incident, pagerduty_event, slack_message)
from bus import RetryPolicy
from rules import Topology
from tests.alertmanager import Receiver, incident_row

NOW = datetime(2026, 1, 5, 10, 5, tzinfo=timezone.utc)
TOPOLOGY = Topology.model_validate({"entities": [{"id": "cart", "type": "service"}, {"id": "cart-0", "type": "instance"}],
                                    "relations": [{"source": "cart-0", "target": "cart", "type": "instance_of"}]})
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefghijkl"
WEBHOOK_SECRET = "whsec-7f3a9c-not-for-logs"
SLACK_TOKEN = "T000/B000/XXXXSLACKSECRETXXXX"
PD_SEVERITIES = {"critical", "error", "warning", "info"}


def notice(event=NoticeEvent.TRIGGER, **row):
    return notice_from_incident(incident_row("inc-1", **row), event=event, topology=TOPOLOGY,
                                public_url="https://rtem.example.com/")


# -- payloads (pure) ---------------------------------------------------------------------------------------

def test_a_notice_says_what_a_person_needs_from_the_row_and_records():
    n = notice()
    assert (n.incident_id, n.service, n.root_cause, n.fault_type) == ("inc-1", "cart", "cart-0", "cpu_saturation")
    assert n.proposed_actions == ("#1 restart_pod on cart-0",) and n.executed_actions == ("#0 notify_oncall on inc-1",)
    assert n.awaiting_approval == ("#1 restart_pod on cart-0",)
    assert n.console_url == "https://rtem.example.com/incidents/inc-1"
    assert n.report_url == "https://rtem.example.com/api/v1/incidents/inc-1/report?format=html"
    assert notice_from_incident(incident_row("inc-1")).console_url is None  # no RTEM_PUBLIC_URL: no links
    assert notice_from_incident(incident_row("inc-1", status="resolved")).event == NoticeEvent.RESOLVE
    # escalated is final for rtem, but a person must act
    assert notice_from_incident(incident_row("inc-1", status="escalated")).event == NoticeEvent.TRIGGER


def test_pagerduty_events_follow_the_events_api_v2():
    trigger = pagerduty_event(notice(severity="warning"), ROUTING_KEY, NOW)
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "inc-1"
    payload = trigger["payload"]
    assert payload["severity"] == "warning" and payload["source"] == "cart-0" and payload["summary"]
    assert len(payload["summary"]) <= 1024 and payload["timestamp"] == "2026-01-05T10:05:00Z"
    assert trigger["links"][0]["href"] == "https://rtem.example.com/incidents/inc-1"
    for event in (NoticeEvent.ACKNOWLEDGE, NoticeEvent.RESOLVE):
        assert pagerduty_event(notice(event), ROUTING_KEY, NOW) == {
            "routing_key": ROUTING_KEY, "event_action": event.value, "dedup_key": "inc-1"}
    for severity in ("info", "warning", "error", "critical"):
        assert pagerduty_event(notice(severity=severity), ROUTING_KEY, NOW)["payload"]["severity"] in PD_SEVERITIES


def test_slack_message_has_the_cause_the_actions_and_the_approval_link():
    message = slack_message(notice(fault_type="<!channel> & more"))
    assert "<!channel>" not in json.dumps(message)  # an event's text cannot ping a channel
    assert message["text"] and [b["type"] for b in message["blocks"]] == ["section", "section", "actions"]
    assert "*Awaiting approval:* #1 restart_pod on cart-0" in message["blocks"][1]["text"]["text"]
    approve = message["blocks"][2]["elements"][0]
    assert approve["url"] == "https://rtem.example.com/incidents/inc-1" and approve["style"] == "primary"
    resolved = slack_message(notice(NoticeEvent.RESOLVE, status="resolved"))
    assert resolved["text"].startswith(":white_check_mark:")


def test_an_open_alert_ends_by_itself_unless_refreshed_and_a_resolve_ends_it_now():
    (alert,) = alertmanager_alerts(notice(), NOW, refresh_s=60)
    assert alert["labels"] == {"alertname": "RtemIncident", "incident": "inc-1", "severity": "critical",
                               "service": "cart", "root_cause": "cart-0"}
    assert alert["startsAt"] == "2026-01-05T10:00:00Z" and alert["endsAt"] == "2026-01-05T10:08:00Z"
    assert alert["generatorURL"] == "https://rtem.example.com/incidents/inc-1"
    (ended,) = alertmanager_alerts(notice(NoticeEvent.RESOLVE), NOW, refresh_s=60)
    assert ended["endsAt"] == "2026-01-05T10:05:00Z"
    (early,) = alertmanager_alerts(notice(opened_at="2026-01-05T10:09:00Z"), NOW, refresh_s=60)
    assert early["startsAt"] <= early["endsAt"]  # event time ahead of the clock


def test_what_is_sent_as_an_incident_moves():
    assert due(None, "diagnosing", 0, 60) is None
    assert due(None, "awaiting_approval", 0, 60) == Due(NoticeEvent.TRIGGER)
    assert due(Sent("awaiting_approval", 0), "awaiting_approval", 30, 60) is None
    assert due(Sent("awaiting_approval", 0), "awaiting_approval", 60, 60) == Due(NoticeEvent.TRIGGER, ("alertmanager",))
    assert due(Sent("awaiting_approval", 0), "verifying", 1, 60) == Due(NoticeEvent.TRIGGER)
    assert due(Sent("verifying", 0), "resolved", 1, 60) == Due(NoticeEvent.RESOLVE)
    assert due(None, "resolved", 1, 60) is None  # nobody was told it began


def test_settings_make_the_destinations_and_refuse_an_unsigned_webhook(tmp_path):
    with AuditLog(tmp_path / "audit.db") as audit:
        assert not build_notifications(Settings(data_dir=tmp_path), audit).configured
        with pytest.raises(ValueError, match="RTEM_WEBHOOK_SECRET_FILE"):
            build_notifications(Settings(data_dir=tmp_path, webhook_url="http://hook"), audit)
        (tmp_path / "key").write_text(ROUTING_KEY + "\n")
        built = build_notifications(Settings(
            data_dir=tmp_path, alertmanager_url="http://am-1:9093, http://am-2:9093", webhook_url="http://hook",
            webhook_secret=SecretStr(WEBHOOK_SECRET), pagerduty_routing_key_file=tmp_path / "key",
            slack_webhook_url=SecretStr("https://hooks.slack.com/services/" + SLACK_TOKEN)), audit)
        assert built.names() == ("alertmanager", "webhook", "pagerduty", "slack")
        assert built.destinations["alertmanager"].endpoints == ("http://am-1:9093", "http://am-2:9093")
        assert built.destinations["pagerduty"].routing_key == ROUTING_KEY
        with pytest.raises(ValueError, match="cannot read it"):
            build_notifications(Settings(data_dir=tmp_path, pagerduty_routing_key_file=tmp_path / "nope"), audit)


# -- against local servers ---------------------------------------------------------------------------------

@pytest.fixture
def audit(tmp_path):
    with AuditLog(tmp_path / "audit.db") as log:
        yield log


def sender(audit, *destinations, attempts: int = 3, breaker_failures: int = 5) -> Notifications:
    return Notifications(destinations, audit, retry=RetryPolicy(max_attempts=attempts, initial_interval_s=0.02),
                         timeout_s=2.0, breaker_failures=breaker_failures)


def run(notifications: Notifications, *notices):
    async def go():
        try:
            return [await notifications.notify(n) for n in notices]
        finally:
            await notifications.close()
    return asyncio.run(go())


def pagerduty_answer(path, headers, body):
    """PagerDuty's documented checks: 400 for an invalid event, else 202 with the dedup_key."""
    event = json.loads(body)
    problems = []
    if headers.get("Content-Type") != "application/json":
        problems.append("Content-Type must be application/json")
    if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action")
    if not event.get("routing_key") or len(event.get("dedup_key", "")) > 255:
        problems.append("routing_key/dedup_key")
    if event.get("event_action") == "trigger":
        payload = event.get("payload") or {}
        if not (payload.get("summary") and payload.get("source") and payload.get("severity") in PD_SEVERITIES):
            problems.append("payload.summary, payload.source and payload.severity are required")
    if problems:
        return 400, json.dumps({"status": "invalid event", "message": "Event object is invalid",
                                "errors": problems}).encode()
    return 202, json.dumps({"status": "success", "message": "Event processed",
                            "dedup_key": event.get("dedup_key")}).encode()


def slack_answer(path, headers, body):
    """Slack's incoming webhook: `text` required (or blocks), blocks a list of typed blocks; answers `ok`."""
    message = json.loads(body)
    if path != "/services/" + SLACK_TOKEN:
        return 404, f"no_service: {path}".encode()  # echoes the secret path, as a careless proxy might
    if not isinstance(message.get("text"), str) or not all("type" in b for b in message.get("blocks", [])):
        return 400, b"invalid_payload"
    return 200, b"ok"


@pytest.mark.integration
def test_the_webhook_is_signed_and_a_tampered_or_old_one_fails(audit):
    with Receiver() as hook:
        (delivery,), = run(sender(audit, Webhook(hook.url + "/rtem", WEBHOOK_SECRET)), notice())
        assert delivery.ok and delivery.http_status == 200
        (request,) = hook.requests
        secret, now = WEBHOOK_SECRET.encode(), time.time()
        assert signing.verify(secret, request["body"], request["headers"], now)
        assert request["json"]["incident_id"] == "inc-1" and request["json"]["event"] == "trigger"
        assert not signing.verify(secret, request["body"].replace(b"inc-1", b"inc-2"), request["headers"], now)
        assert not signing.verify(b"another secret", request["body"], request["headers"], now)
        assert not signing.verify(secret, request["body"], request["headers"], now + 301)  # replayed later


@pytest.mark.integration
def test_pagerduty_trigger_acknowledge_resolve_share_the_dedup_key(audit):
    with Receiver(pagerduty_answer) as pd:
        results = run(sender(audit, PagerDuty(pd.url + "/v2/enqueue", ROUTING_KEY)),
                      notice(), notice(NoticeEvent.ACKNOWLEDGE), notice(NoticeEvent.RESOLVE, status="resolved"))
        assert [d.http_status for (d,) in results] == [202, 202, 202]
        assert [(p["event_action"], p["dedup_key"]) for p in pd.posts] == [
            ("trigger", "inc-1"), ("acknowledge", "inc-1"), ("resolve", "inc-1")]
    assert [r.inputs["event"] for r in audit.records(kind="notification.sent")] == ["trigger", "acknowledge", "resolve"]


@pytest.mark.integration
def test_slack_gets_a_valid_message_and_a_retry_after_a_server_error(audit):
    answers = iter([(503, b"try later"), (503, b"try later")])
    with Receiver(lambda *req: next(answers, None) or slack_answer(*req)) as slack:
        (delivery,), = run(sender(audit, Slack(slack.url + "/services/" + SLACK_TOKEN)), notice())
        assert delivery.ok and delivery.attempts == 3 and len(slack.requests) == 3
        assert slack.requests[-1]["status"] == 200
    (record,) = audit.records(kind="notification.sent")
    assert record.inputs["attempts"] == 3 and record.inputs["destination"] == "slack"


@pytest.mark.integration
def test_a_failing_destination_opens_its_breaker_is_audited_and_leaks_no_secret(audit, caplog):
    caplog.set_level(logging.DEBUG)
    with Receiver(slack_answer) as slack, Receiver(pagerduty_answer) as pd:
        wrong = Slack(slack.url + "/services/" + SLACK_TOKEN.replace("XXXX", "YYYY"))  # 404: permanent
        down = Webhook("http://127.0.0.1:9/rtem", WEBHOOK_SECRET)  # nothing listens: retried, then failed
        notifications = sender(audit, wrong, down, PagerDuty(pd.url, ROUTING_KEY), attempts=2, breaker_failures=2)
        results = run(notifications, notice(), notice(), notice())
    by_name = [{d.destination.value: d for d in deliveries} for deliveries in results]
    assert [r["pagerduty"].ok for r in by_name] == [True, True, True]  # the others never stop it
    assert [r["slack"].http_status for r in by_name] == [404, 404, None]
    assert [r["webhook"].attempts for r in by_name] == [2, 2, 0]
    assert by_name[2]["slack"].breaker_open and by_name[2]["webhook"].breaker_open
    assert len(slack.requests) == 2  # the open breaker sent nothing
    failed = audit.records(kind="notification.failed")
    assert len(failed) == 6 and failed[-1].decision["breaker"] == "open"
    assert {r.inputs["destination"] for r in failed} == {"slack", "webhook"}
    everything = json.dumps([r.model_dump(mode="json") for r in audit.records()]) + caplog.text
    for secret in (ROUTING_KEY, WEBHOOK_SECRET, "SLACKSECRET", "YYYYSLACK"):
        assert secret not in everything, secret
    assert "404" in everything  # the failure itself is said


def test_old_time_is_refused_by_the_documented_receiver_tolerance():
    body = b'{"incident_id": "inc-1"}'
    headers = signing.sign(b"k", body, int(NOW.timestamp()))
    assert signing.verify(b"k", body, headers, (NOW + timedelta(seconds=299)).timestamp())
    assert not signing.verify(b"k", body, headers, (NOW + timedelta(seconds=301)).timestamp())


@pytest.mark.integration
def test_a_page_goes_to_the_destinations_it_names_and_tells_them_whom_it_is_for(tmp_path, audit):
    from agent.notify import IncidentPager
    from agent.store import IncidentStore

    store = IncidentStore(tmp_path / "rtem.db")
    with Receiver(slack_answer) as slack, Receiver(pagerduty_answer) as pd:
        notifications = sender(audit, Slack(slack.url + "/services/" + SLACK_TOKEN), PagerDuty(pd.url, ROUTING_KEY))
        pager = IncidentPager(notifications, store, audit, topology=None, public_url=None, refresh_s=60)

        async def go():
            try:
                named = await pager.page("inc-9", "page about inc-9", ("slack", "rotation:payments", "sms"))
                default = await pager.page("inc-9", "again", ("person:ana",))  # no destination named: the direct ones
                return named, default
            finally:
                await notifications.close()

        named, default = asyncio.run(go())
    store.close()
    assert [d.destination.value for d in named] == ["slack"] and named[0].ok
    assert "*Paging:* rotation:payments, sms" in slack.posts[0]["blocks"][1]["text"]["text"]
    assert sorted(d.destination.value for d in default) == ["pagerduty", "slack"]
    assert pd.posts[0]["payload"]["custom_details"]["oncall"] == ["person:ana"]


@pytest.mark.integration
def test_the_pager_triggers_on_changes_keeps_alertmanager_alive_and_resolves_from_the_store(tmp_path, audit):
    from agent.notify import Alertmanager, IncidentPager
    from agent.store import IncidentStore

    store = IncidentStore(tmp_path / "rtem.db")
    for incident_id in ("inc-1", "inc-2"):
        store.upsert_incident({"id": incident_id, "first_ts": 1.7e9, "last_ts": 1.7e9 + 60, "severity": "error",
                               "entities": ["cart-0"], "detections": ["cpu-high"], "signals": 1})
        row = incident_row(incident_id)
        store.save_diagnosis(incident_id, status="awaiting_approval", root_causes=row["root_causes"],
                             actions=row["actions"], versions={})
    now = [1000.0]
    with Receiver() as am, Receiver() as hook:
        notifications = sender(audit, Alertmanager((am.url,), 60), Webhook(hook.url, WEBHOOK_SECRET))
        pager = IncidentPager(notifications, store, audit, topology=lambda: TOPOLOGY, public_url=None, refresh_s=60,
                              clock=lambda: now[0])

        async def settle():
            await asyncio.sleep(0)
            await pager.drain(5)

        async def go():
            try:
                pager.changed("inc-1", "diagnosing")  # nothing to say before the diagnosis
                pager.changed("inc-1", "awaiting_approval")  # everywhere
                await settle()
                pager.refresh(["inc-1"])  # not due yet
                await settle()
                now[0] += 61
                pager.refresh(["inc-1", "inc-2"])  # inc-1: Alertmanager again; inc-2 (taken over): kept alive there
                await settle()
                store.set_status("inc-2", "verifying")
                pager.changed("inc-2", "verifying")  # a change this worker made: news everywhere
                store.set_status("inc-1", "resolved")  # as a person closing it
                now[0] += 61
                pager.refresh(["inc-1", "inc-2"])
                await settle()
            finally:
                await notifications.close()

        asyncio.run(go())
    store.close()
    notices = [(p["incident_id"], p["event"], p["status"]) for p in hook.posts]
    assert sorted(notices) == [("inc-1", "resolve", "resolved"), ("inc-1", "trigger", "awaiting_approval"),
                               ("inc-2", "trigger", "verifying")]
    alerts = [(p[0]["labels"]["incident"], p[0]["annotations"]["status"]) for p in am.posts]
    assert [a for a in alerts if a[0] == "inc-1"] == [("inc-1", "awaiting_approval")] * 2 + [("inc-1", "resolved")]
    assert [a for a in alerts if a[0] == "inc-2"] == [("inc-2", "awaiting_approval"), ("inc-2", "verifying")]
    resolved = next(p[0] for p in am.posts if p[0]["annotations"]["status"] == "resolved")
    assert resolved["endsAt"] < next(p[0] for p in am.posts)["endsAt"]  # ended now, not 3 refreshes ahead
