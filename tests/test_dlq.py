"""Dead letters a person can read, redrive and purge (`agent/dlq.py`, `rtem dlq`, `/api/v1/dlq`): the check a
redrive makes, pure; then over a real NATS server; then through a live `rtem run` (its API, its console's
count, and the CLI on its embedded server), each change audited with who made it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from agent.audit import AuditLog
from agent.dlq import (DeadLetterKind, DeadLetterQueue, DeadLetterSummary, DlqError, DlqFilter, Outcome, recheck,
                       redrive_id)
from bus import Bus, BusSettings, DeadLetter, format_time, parse_event
from tests.helpers import cloud_event

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
MALFORMED = b'{"specversion": "1.0", "id": "broken-1", "source": "/test"'


def anomaly_at(event_id: str, when: datetime, subject: str = "cartservice-0") -> bytes:
    return json.dumps(cloud_event(event_id, subject, format_time(when), severity="error",
                                  message="cpu anomalous (up)", metric="container_cpu_usage_seconds",
                                  direction="up")).encode()


def letter(data: bytes, seq: int = 7, kind: str = "invalid", reason: str = "r", received: datetime = NOW,
           original_size: int | None = None) -> DeadLetter:
    return DeadLetter(seq=seq, subject=f"rtem.dlq.{kind}", reason=reason, event_id=None, deliveries=1, data=data,
                      received=received, original_size=original_size)


# -- the check a redrive makes, and what a person sees: pure --------------------------------------------------


def test_a_redrive_rechecks_with_the_consumers_door_and_the_clock_it_is_given():
    ahead = anomaly_at("soon", NOW + timedelta(seconds=30))
    refused = recheck(letter(ahead), NOW, 10.0, 1 << 20)
    assert isinstance(refused, str) and "30 s ahead" in refused and "RTEM_MAX_CLOCK_SKEW_S=10" in refused
    later = recheck(letter(ahead), NOW + timedelta(seconds=25), 10.0, 1 << 20)
    assert later == parse_event(ahead), "once the event is no longer ahead, it passes"
    assert recheck(letter(ahead), NOW, 60.0, 1 << 20).id == "soon", "a relaxed skew setting lets it pass"
    assert "JSON" in recheck(letter(MALFORMED), NOW, 10.0, 1 << 20)
    cut = recheck(letter(ahead[:40], original_size=len(ahead)), NOW + timedelta(days=1), 10.0, 1 << 20)
    assert cut.startswith(f"only 40 of its {len(ahead)} bytes were kept")
    assert "over the 1024-byte limit" in recheck(letter(ahead + b" " * 1100), NOW + timedelta(days=1), 10.0, 1024)


def test_a_redriven_event_is_not_taken_for_its_original_publish():
    event = parse_event(anomaly_at("e-1", NOW))
    assert redrive_id(event) == "redrive:e-1" != event.id


def test_since_takes_a_zoned_time_or_an_age():
    from agent.cli._dlq import since_of

    assert since_of("15m", NOW) == NOW - timedelta(minutes=15) and since_of("7d", NOW) == NOW - timedelta(days=7)
    assert since_of("2026-01-02T03:00:00Z", NOW) == NOW.replace(minute=0, second=0)
    assert since_of(None, NOW) is None
    for bad in ("2026-01-02T03:00:00", "yesterday", "5w"):
        with pytest.raises(ValueError, match="give a time with a zone"):
            since_of(bad, NOW)


def test_filters_and_previews():
    old = letter(b"x", kind="future", reason="dated 2099, 10 s ahead", received=NOW - timedelta(hours=2))
    assert DlqFilter(kind=DeadLetterKind.future, reason="AHEAD").matches(old)
    assert not DlqFilter(kind=DeadLetterKind.invalid).matches(old)
    assert not DlqFilter(since=NOW - timedelta(hours=1)).matches(old)
    assert DlqFilter().empty and not DlqFilter(reason="x").empty
    summary = DeadLetterSummary.of(letter(b'{"a":\n  ' + b"b" * 500 + b"\xff"))
    assert summary.preview.startswith('{"a": bbb') and len(summary.preview) == 80 and summary.preview.endswith("…")
    assert summary.size == 509 and summary.kind == "invalid"


# -- over a real NATS server ---------------------------------------------------------------------------------


async def dead_lettered(bus: Bus, lines: list[bytes]) -> list[str]:
    """Publish `lines` and consume them as triage would; returns the ids the handler was given."""
    given: list[str] = []

    async def handler(events):
        given.extend(e.id for e in events)

    await bus.publish_lines(lines)
    await bus.consume(handler, until_drained=True, fetch_timeout=0.2)
    return given


@pytest.mark.integration
async def test_list_show_redrive_and_purge_over_the_bus(bus, tmp_path):
    strict = Bus(bus.nc, replace(bus.settings, max_future_skew_s=1.0))  # a producer's clock 1 min ahead is refused
    now = datetime.now(timezone.utc)
    ahead = anomaly_at("ahead-1", now + timedelta(seconds=60))
    assert await dead_lettered(strict, [MALFORMED, ahead, anomaly_at("fine-1", now)]) == ["fine-1"]

    with AuditLog(tmp_path / "audit.db") as audit:
        relaxed = Bus(bus.nc, BusSettings())  # the setting relaxed to its 300 s default (a restart with the fix)
        dlq = DeadLetterQueue(relaxed, audit, max_event_bytes=1 << 20)
        assert await dlq.count() == 2
        newest, oldest = await dlq.find()
        assert (newest.kind, newest.event_id, oldest.kind) == ("future", "ahead-1", "invalid")
        assert "60 s ahead" in newest.reason and "RTEM_MAX_CLOCK_SKEW_S=1" in newest.reason
        assert oldest.reason and oldest.preview.startswith('{"specversion": "1.0", "id": "broken-1"')
        assert [s.seq for s in await dlq.find(DlqFilter(kind=DeadLetterKind.invalid))] == [oldest.seq]
        assert [s.seq for s in await dlq.find(DlqFilter(reason="ahead"))] == [newest.seq]
        assert await dlq.find(DlqFilter(since=now + timedelta(hours=1))) == []
        assert len(await dlq.find(limit=1)) == 1
        shown = await dlq.show(newest.seq)
        assert shown.data == ahead.decode() and shown.headers["Rtem-Reason"] == newest.reason and shown.utf8
        assert shown.original_subject == "rtem.events.rtem.metric.anomaly"
        with pytest.raises(DlqError, match="no dead letter with seq 999"):
            await dlq.show(999)

        dry = await dlq.redrive(by="ann@host", via="cli", dry_run=True)
        assert dry.counts["would_redrive"] == 1 and dry.counts["still_failing"] == 1 and await dlq.count() == 2
        report = await dlq.redrive(by="ann@host", via="cli")
        assert {r.seq: r.outcome for r in report.results} == {newest.seq: Outcome.redriven,
                                                              oldest.seq: Outcome.still_failing}
        assert [s.seq for s in await dlq.find()] == [oldest.seq], "what still fails stays"
        assert await dead_lettered(relaxed, []) == ["ahead-1"], "the redriven event reaches the consumer"
        again = await dlq.redrive([newest.seq], by="ann@host", via="cli")
        assert again.counts["missing"] == 1 and again.counts["redriven"] == 0

        # Copies of one event (the producer sent it again) are one message on EVENTS, however often redriven.
        other = anomaly_at("ahead-2", now)
        for data, event_id in ((other, "ahead-2"), (other, "ahead-2"), (ahead, "ahead-1")):
            await bus.dead_letter(data, "test copy", event_id=event_id, kind="future")
        twice = await dlq.redrive(where=DlqFilter(reason="test copy"), by="ann@host", via="cli")
        assert [r.outcome for r in twice.results] == [Outcome.redriven] + [Outcome.already_on_events] * 2
        assert await dead_lettered(relaxed, []) == ["ahead-2"], "one more delivery, not three"

        with pytest.raises(DlqError, match="nothing selected"):
            await dlq.purge(by="ann@host", via="cli")
        await bus.dead_letter(b"junk", "junk", kind="invalid")
        purged = await dlq.purge([oldest.seq, 12345], by="ann@host", via="cli")
        assert purged.purged == 1 and purged.seqs == [oldest.seq] and purged.missing == [12345]
        assert (await dlq.purge(where=DlqFilter(kind=DeadLetterKind.invalid), by="ann@host", via="cli")).purged == 1
        await bus.dead_letter(b"junk", "junk", kind="failed")
        assert (await dlq.purge(everything=True, by="ann@host", via="cli")).purged == 1
        assert await dlq.count() == 0

        redriven = audit.records(kind="dlq.redriven")
        assert [r.decision["counts"]["redriven"] for r in redriven] == [1, 0, 1]
        assert redriven[0].inputs["by"] == "ann@host" and redriven[0].decision["redriven"] == [newest.seq]
        assert redriven[0].decision["still_failing"][0]["seq"] == oldest.seq
        purges = audit.records(kind="dlq.purged")
        assert [(p.inputs["by"], p.decision["purged"]) for p in purges] == [("ann@host", 1)] * 3
        assert purges[0].decision["seqs"] == [oldest.seq] and purges[2].inputs == {"by": "ann@host", "via": "cli",
                                                                                   "all": True}


# -- through a live `rtem run`: its API and console, and the CLI on its embedded server ----------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory, boutique):
    """`rtem run` with its own authenticating NATS server and HTTP API; events dated over 1 s ahead are refused."""
    from agent.config import Settings
    from agent.tokens import TokenStore
    from tests.live import ThreadedService

    data = tmp_path_factory.mktemp("dlq") / "data"
    settings = Settings(data_dir=data, diagnose_after_s=5, verify_quiet_s=30, verify_deadline_s=300, http_port=0,
                        max_clock_skew_s=1)
    service = ThreadedService(settings, boutique).start()
    tokens = TokenStore(data / "rtem.db")
    service.tokens = {role: tokens.create(f"{role}-1", role)[0] for role in ("viewer", "operator", "admin")}
    service.tokens["scoped"] = tokens.create("carol", "operator", services=["cartservice"])[0]
    tokens.close()
    service.data = data
    yield service
    service.stop()


def publish_raw(live, lines: list[bytes]) -> None:
    live.call(live.service.bus.publish_lines(lines))


def cli(live, *args: str):
    from tests.helpers import runner
    from agent.cli import app

    return runner.invoke(app, ["dlq", *args], env={"RTEM_DATA_DIR": str(live.data), "RTEM_MAX_CLOCK_SKEW_S": "1"})


@pytest.mark.integration
def test_a_person_lists_redrives_and_purges_through_the_api_and_the_cli(live):
    from agent.identity import operator
    from tests.live import api_client

    late_at = datetime.now(timezone.utc) + timedelta(seconds=4)  # a producer whose clock runs 4 s fast
    publish_raw(live, [MALFORMED, anomaly_at("late-1", late_at), anomaly_at("far-1", late_at + timedelta(days=30))])
    with api_client(live, "operator") as http, api_client(live, "admin") as admin:
        live.wait(lambda: http.get("/api/v1/dlq?limit=0").json()["total"] == 3)
        listed = http.get("/api/v1/dlq").json()["dead_letters"]
        assert [(d["kind"], d["event_id"]) for d in listed] == [("future", "far-1"), ("future", "late-1"),
                                                                ("invalid", None)]
        assert "RTEM_MAX_CLOCK_SKEW_S=1" in listed[1]["reason"] and "JSON" in listed[2]["reason"]
        assert [d["seq"] for d in http.get("/api/v1/dlq", params={"kind": "invalid"}).json()["dead_letters"]] \
            == [listed[2]["seq"]]
        shown = http.get(f"/api/v1/dlq/{listed[2]['seq']}").json()
        assert shown["data"] == MALFORMED.decode() and shown["headers"]["Rtem-Reason"] == listed[2]["reason"]
        assert http.get("/api/v1/dlq/99999").status_code == 404
        assert http.get("/api/v1/dlq/0").status_code == 422
        assert http.get("/api/v1/dlq", params={"since": "2026-01-01T00:00:00"}).status_code == 400
        for body in ({}, {"seqs": [1], "all": True}, {"seqs": [0]}, {"kind": "nope"}, {"all": True, "x": 1}):
            assert http.post("/api/v1/dlq/redrive", json=body).status_code == 422, body
        assert http.post("/api/v1/dlq/purge", json={"all": True}).status_code == 403, "an operator does not purge"

        listing = cli(live, "list", "--json")
        assert listing.exit_code == 0, listing.output
        assert [d["event_id"] for d in json.loads(listing.stdout)["dead_letters"]] == ["far-1", "late-1", None]
        assert "broken-1" in cli(live, "show", str(listed[2]["seq"])).stdout

        live.wait(lambda: datetime.now(timezone.utc) > late_at - timedelta(seconds=0.5), timeout=10)
        report = http.post("/api/v1/dlq/redrive", json={"kind": "future"}).json()
        assert {r["event_id"]: r["outcome"] for r in report["results"]} == {"late-1": "redriven",
                                                                            "far-1": "still_failing"}
        assert "ahead of the receive time" in report["results"][1]["reason"]
        incident = live.wait(lambda: next((i for i in http.get("/api/v1/incidents").json()["incidents"]
                                           if "cartservice-0" in i["entities"]), None))
        assert incident["event_count"] == 1, "the redriven event reached triage and opened an incident"

        again = cli(live, "redrive", str(listed[0]["seq"]), str(listed[1]["seq"]), "--json")
        assert again.exit_code == 1, "what could not be redriven makes the command fail"
        assert json.loads(again.stdout)["counts"] == {"redriven": 0, "already_on_events": 0, "would_redrive": 0,
                                                      "still_failing": 1, "missing": 1}
        purged = cli(live, "purge", "--kind", "invalid", "--json")
        assert purged.exit_code == 0 and json.loads(purged.stdout)["purged"] == 1
        assert cli(live, "purge", "--all").exit_code == 2, "--all needs --yes"
        assert admin.post("/api/v1/dlq/purge", json={"all": True}).json()["purged"] == 1
        assert http.get("/api/v1/dlq").json() == {"total": 0, "dead_letters": []}

    records = {(r.kind, r.inputs["by"], r.inputs["via"]) for r in live.service.parts.audit.records()
               if r.kind.startswith("dlq.")}
    assert records == {("dlq.redriven", "operator-1", "api"), ("dlq.redriven", operator(), "cli"),
                       ("dlq.purged", operator(), "cli"), ("dlq.purged", "admin-1", "api")}


@pytest.mark.integration
def test_only_unscoped_operators_and_admins_read_dead_letters(live):
    from tests.live import api_client

    for who, status in ((None, 401), ("viewer", 403), ("scoped", 403), ("operator", 200), ("admin", 200)):
        with api_client(live, who) as http:
            assert http.get("/api/v1/dlq").status_code == status, who
            if status != 200:
                assert http.post("/api/v1/dlq/redrive", json={"all": True, "dry_run": True}).status_code == status
    denied = [r for r in live.service.parts.audit.records(kind="access.denied") if r.inputs["path"].startswith("/api/v1/dlq")]
    assert {r.inputs["token"] for r in denied} >= {"anonymous", "viewer-1", "carol"}
    assert any("scoped" in r.reasons[0] for r in denied)


@pytest.mark.integration
async def test_the_console_shows_the_count_to_those_who_may_read_it(live):
    playwright_api = pytest.importorskip("playwright.async_api", reason="the console check needs playwright")
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium executable (apt-get install chromium); this test never downloads a browser")
    await asyncio.to_thread(publish_raw, live, [b"not json at all"])
    from tests.live import api_client

    with api_client(live, "operator") as http:
        total = await asyncio.to_thread(lambda: live.wait(lambda: http.get("/api/v1/dlq?limit=0").json()["total"]))
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                   "--disable-background-networking", "--no-first-run"])
        errors: list[str] = []
        try:
            for who, shown in (("operator", True), ("viewer", False)):
                page = await (await browser.new_context(base_url=live.url)).new_page()
                page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
                await page.goto("/login")
                await page.get_by_label("API token").fill(live.tokens[who])
                await page.get_by_test_id("login").click()
                await page.wait_for_url(f"{live.url}/")
                await playwright_api.expect(page.get_by_test_id("who-role")).to_have_text(who)
                count = page.get_by_test_id("dlq-count")
                if shown:
                    await playwright_api.expect(count).to_have_text(
                        f"{total} dead letter{'s' if total != 1 else ''} (rtem dlq list)")
                else:
                    await playwright_api.expect(page.get_by_test_id("incident-rows")).to_be_attached()
                    await page.wait_for_timeout(300)
                    assert await count.is_hidden(), "a viewer does not see the DLQ"
        finally:
            await browser.close()
    assert not errors, f"JavaScript errors in the console: {errors}"
