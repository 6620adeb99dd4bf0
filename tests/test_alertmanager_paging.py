"""rtem's Alertmanager destination against a real Alertmanager (Debian's prometheus-alertmanager): a firing
group is notified once however many incidents it holds, a closed incident's alert resolves, and a silence
made through Alertmanager's own API keeps a notification from going out."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from agent.audit import AuditLog
from agent.notify import (Alertmanager as AlertmanagerDestination, NoticeEvent, Notifications,
                          notice_from_incident)
from bus import RetryPolicy
from rules import Topology
from tests.alertmanager import Alertmanager, Receiver, incident_row

pytestmark = pytest.mark.integration

TOPOLOGY = Topology.model_validate({
    "entities": [{"id": "checkout", "type": "service"}, {"id": "checkout-0", "type": "instance"},
                 {"id": "checkout-1", "type": "instance"}, {"id": "cart", "type": "service"},
                 {"id": "cart-0", "type": "instance"}],
    "relations": [{"source": "checkout-0", "target": "checkout", "type": "instance_of"},
                  {"source": "checkout-1", "target": "checkout", "type": "instance_of"},
                  {"source": "cart-0", "target": "cart", "type": "instance_of"}]})


@pytest.fixture(scope="module")
def hook():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def am(tmp_path_factory, hook):
    with Alertmanager(tmp_path_factory.mktemp("am"), hook.url + "/alertmanager") as manager:
        yield manager


@pytest.fixture
def audit(tmp_path):
    with AuditLog(tmp_path / "audit.db") as log:
        yield log


def notifications(audit, *urls: str) -> Notifications:
    return Notifications([AlertmanagerDestination(urls, refresh_s=60.0)], audit,
                         retry=RetryPolicy(max_attempts=2, initial_interval_s=0.05), timeout_s=2.0)


def notice(incident_id: str, entity: str, event: NoticeEvent = NoticeEvent.TRIGGER):
    # Opened just now: Alertmanager notifies an alert that started more than group_wait ago at once, and
    # would then tell the group's second incident in a notification of its own.
    opened = datetime.now(timezone.utc).isoformat()
    return notice_from_incident(incident_row(incident_id, entity=entity, opened_at=opened), event=event,
                                topology=TOPOLOGY, public_url="https://rtem.example.com")


def group(posts, service: str, status: str | None = None):
    return [p for p in posts if p and p["groupLabels"].get("service") == service
            and (status is None or p["status"] == status)]


def test_a_group_fires_once_and_resolves_on_close(am, hook, audit):
    sender = notifications(audit, am.url)

    async def scenario():
        try:
            sent = await asyncio.gather(sender.notify(notice("inc-a", "checkout-0")),
                                        sender.notify(notice("inc-b", "checkout-1")))
            assert all(d.ok and d.http_status == 200 for deliveries in sent for d in deliveries), sent
            hook.wait_for(lambda posts: group(posts, "checkout", "firing"), what="the checkout group firing")
            await asyncio.sleep(2.5)  # past a group_interval: a second notification would have come by now
            firing = group(hook.posts, "checkout", "firing")
            assert len(firing) == 1, firing
            assert sorted(a["labels"]["incident"] for a in firing[0]["alerts"]) == ["inc-a", "inc-b"]
            alert = firing[0]["alerts"][0]
            assert alert["labels"]["alertname"] == "RtemIncident" and alert["labels"]["service"] == "checkout"
            assert alert["annotations"]["console_url"].startswith("https://rtem.example.com/incidents/inc-")
            assert "restart_pod" in alert["annotations"]["proposed_actions"]

            await asyncio.gather(sender.notify(notice("inc-a", "checkout-0", NoticeEvent.RESOLVE)),
                                 sender.notify(notice("inc-b", "checkout-1", NoticeEvent.RESOLVE)))
            hook.wait_for(lambda posts: group(posts, "checkout", "resolved"), what="the checkout group resolved")
            assert {a["status"] for a in group(hook.posts, "checkout", "resolved")[0]["alerts"]} == {"resolved"}
        finally:
            await sender.close()

    asyncio.run(scenario())
    sent = audit.records(kind="notification.sent")
    assert len(sent) == 4 and {r.inputs["event"] for r in sent} == {"trigger", "resolve"}


def test_a_silence_keeps_the_notification_from_going_out(am, hook, audit):
    am.silence({"service": "cart"}, comment="maintenance of cart")
    sender = notifications(audit, am.url, "http://127.0.0.1:9")  # an HA pair whose second member is down

    async def scenario():
        try:
            return await sender.notify(notice("inc-c", "cart-0"))
        finally:
            await sender.close()

    deliveries = asyncio.run(scenario())
    assert [d.ok for d in deliveries] == [True, False]  # one member down does not stop the other
    deadline = time.monotonic() + 5
    while not am.alerts(incident="inc-c") and time.monotonic() < deadline:
        time.sleep(0.1)
    (held,) = am.alerts(incident="inc-c")  # Alertmanager has the alert …
    assert held["status"]["state"] == "suppressed" and held["status"]["silencedBy"]
    time.sleep(3.5)  # … and past group_wait + group_interval, nothing was sent for it
    assert group(hook.posts, "cart") == []
    failed = audit.records(kind="notification.failed")
    assert len(failed) == 1 and failed[0].inputs["endpoint"] == "127.0.0.1:9"


async def test_rtem_run_pages_an_escalation_and_resolves_it_when_a_person_does(tmp_path, nats_server, bus, boutique,
                                                                              am, hook):
    """The wiring in `rtem run`: an escalated incident fires in Alertmanager and triggers PagerDuty and the
    signed webhook; the page (notify_oncall) goes to the direct notifiers; once the store says a person
    resolved it, the refresh resolves it everywhere."""
    from agent import signing
    from agent.run import Service
    from tests.live import Target, anomaly, publish, settings, wait_for
    from tests.test_notifiers import pagerduty_answer

    failing = Target(fail={"restart_instance"})
    await failing.attach(bus.nc)
    with Receiver() as webhook, Receiver(pagerduty_answer) as pd:
        service = await Service(settings(
            tmp_path, nats_server, alertmanager_url=am.url, alertmanager_refresh_s=1, webhook_url=webhook.url,
            webhook_secret="s3cret", pagerduty_routing_key="R0UTING", pagerduty_url=pd.url,
            public_url="https://rtem.example.com", notify_retry_initial_s=0.05), boutique, poll_s=0.05).start()
        try:
            await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
            row = await wait_for(lambda: next((r for r in service.parts.store.incidents()
                                               if r["status"] == "escalated"), None))
            incident_id = row["id"]
            firing = await asyncio.to_thread(hook.wait_for, lambda posts: [
                p for p in posts if p and any(a["labels"].get("incident") == incident_id for a in p["alerts"])],
                10.0, "the escalated incident firing in Alertmanager")
            assert firing[-1]["status"] == "firing"
            await wait_for(lambda: any(p["event_action"] == "trigger" and p["dedup_key"] == incident_id
                                       for p in pd.posts))
            (paged,) = await wait_for(lambda: service.parts.audit.records(incident_id=incident_id,
                                                                           kind="incident.paged"))
            assert paged.decision["paged"] is True and set(paged.decision["result"]["paged"]) == {"webhook", "pagerduty"}
            escalated = await wait_for(lambda: [r for r in webhook.requests if r["json"]["status"] == "escalated"])
            assert signing.verify(b"s3cret", escalated[0]["body"], escalated[0]["headers"], time.time())

            service.parts.store.set_status(incident_id, "resolved")  # as a person resolving it would
            await wait_for(lambda: any(p["event_action"] == "resolve" and p["dedup_key"] == incident_id
                                       for p in pd.posts), 10)
            await asyncio.to_thread(hook.wait_for, lambda posts: [
                p for p in posts if p and p["status"] == "resolved"
                and any(a["labels"].get("incident") == incident_id for a in p["alerts"])],
                10.0, "the incident's alert resolved")
            sent = {(r.inputs["destination"], r.inputs["event"])
                    for r in service.parts.audit.records(incident_id=incident_id, kind="notification.sent")}
            assert {("alertmanager", "trigger"), ("alertmanager", "resolve"), ("pagerduty", "resolve")} <= sent
        finally:
            await service.stop()
