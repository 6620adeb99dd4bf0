"""The web console in a real browser (Debian's chromium, driven by Playwright) against the live service:
sign in with a token, watch an incident arrive, approve its drain_host and see it run; what a viewer
may not do; a refused token; chat citations that lead to the timeline; the rules page."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from agent.config import Settings
from agent.run import Service
from agent.tokens import TokenStore
from rules._check import packaged_rules_dir
from tests.live import Target, anomaly, publish, sample, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

playwright_api = pytest.importorskip("playwright.async_api", reason="the console tests need the [dev] extra (playwright)")
async_playwright, expect = playwright_api.async_playwright, playwright_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("no chromium executable (apt-get install chromium); the console tests never download a browser",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
# Flags that keep a headless chromium from phoning home, so the tests run offline.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 30_000  # diagnosis, approval pick-up and execution happen on the service's own clock
BROKEN = "\n  - id: broken\n    match: {action: scale_uot}\n    outcome: deny\n    reason: r\n"
CPU_FAULT = [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)]


class Console:
    """The live service with its HTTP API and console, a target that obeys its commands, and tokens."""

    def __init__(self, service: Service, target: Target, bus):
        self.service, self.target, self.bus = service, target, bus
        self.url = service.http_url
        self.tokens = TokenStore(service.parts.store.path)
        self.page_errors: list[str] = []  # uncaught JavaScript errors on any page of the test

    def token(self, name: str, role: str) -> str:
        plaintext, _info = self.tokens.create(name, role)
        return plaintext

    def incident(self) -> dict | None:
        rows = self.service.parts.store.incidents()
        return rows[0] if rows else None

    async def cpu_fault(self) -> None:
        """A CPU fault on host node-6: drain_host is high risk, so its incident will wait for a person."""
        await publish(self.bus, CPU_FAULT)

    async def awaiting_approval(self) -> dict:
        return await wait_for(lambda: (self.incident() or {}).get("status") == "awaiting_approval" and self.incident(),
                              30, message=lambda: f"incident: {self.incident()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    """A copy of the packaged rules, for a test to break."""
    root = tmp_path / "rules"
    for kind in ("guardrails", "contracts", "detect"):
        shutil.copytree(packaged_rules_dir() / kind, root / kind)
    return root


@pytest.fixture
async def console(tmp_path, nats_server, bus, boutique, rules_dir):
    target = Target()
    await target.attach(bus.nc)
    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, diagnose_after_s=5, verify_quiet_s=30,
                        verify_deadline_s=300, http_port=free_port(), rules_dir=rules_dir)
    service = await Service(settings, boutique, poll_s=0.05).start()
    try:
        assert service.http_url, "Service serves HTTP when http_port is set"
        console = Console(service, target, bus)
        try:
            yield console
        finally:
            console.tokens.close()
        assert not console.page_errors, f"JavaScript errors in the console: {console.page_errors}"
    finally:
        await service.stop()


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def signed_in(browser, console: Console, token: str):
    """A fresh browser context (its own cookies) signed in with `token`, on the incidents page."""
    context = await browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda error: console.page_errors.append(f"{page.url}: {error}"))
    page.set_default_timeout(10_000)
    await page.goto("/login")
    await page.get_by_label("API token").fill(token)
    await page.get_by_test_id("login").click()
    await page.wait_for_url(f"{console.url}/")
    return page


def action(page, type: str):
    return page.locator(f'[data-testid=action][data-type="{type}"]')


async def test_an_approver_approves_drain_host_in_the_browser_and_sees_it_run(console, browser):
    page = await signed_in(browser, console, console.token("alice", "approver"))
    await expect(page.get_by_test_id("who-name")).to_have_text("alice")
    await expect(page.get_by_test_id("who-role")).to_have_text("approver")

    # The list polls: an incident that opens while the page is shown appears without a reload.
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    row = page.locator(f'[data-testid=incident-row][data-id="{incident["id"]}"]')
    await expect(row).to_have_attribute("data-status", "awaiting_approval", timeout=WAIT_MS)
    await expect(row).to_have_class(re.compile(r"\bchanged\b"))  # new or changed rows are highlighted
    await expect(row.get_by_test_id("row-actions")).to_contain_text("drain_host node-6")
    await expect(row.get_by_test_id("row-actions")).to_contain_text("require_approval")
    await page.get_by_test_id("status-filter").select_option("resolved")
    await expect(row).to_have_count(0)
    await page.get_by_test_id("status-filter").select_option("awaiting_approval")
    await expect(row).to_be_visible()

    await row.get_by_test_id("incident-link").click()
    await page.wait_for_url(f"**/incidents/{incident['id']}")
    await expect(page.get_by_test_id("hypotheses")).to_contain_text("node-6")
    await expect(page.get_by_test_id("hypotheses").get_by_test_id("confidence").first).to_have_text("> 99.99%")
    await expect(page.locator('[data-testid=timeline-entry][data-kind="approval.requested"]')).to_be_visible()
    drain = action(page, "drain_host")
    await expect(drain).to_have_attribute("data-status", "awaiting_approval")
    await expect(drain).to_contain_text("high-risk-needs-approval")
    await expect(action(page, "notify_oncall").get_by_test_id("approve")).to_have_count(0)

    reason = 'node-6 is pinned at 100% CPU; drain it <img src=x onerror="window.pwned=1">'
    await drain.get_by_test_id("reason").fill(reason)
    await drain.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("decision-notice")).to_contain_text("Approved #0 drain_host as alice")
    # The page refreshes itself: approved, then done once the target has applied the command.
    await expect(drain).to_have_attribute("data-status", "done", timeout=WAIT_MS)
    await expect(drain.get_by_test_id("approval")).to_contain_text("approved by alice")
    await expect(drain.get_by_test_id("approve")).to_have_count(0)
    assert any(a == "drain_host" for _, a, _ in console.target.applied), console.target.applied
    decided = page.locator('[data-testid=timeline-entry][data-kind="approval.decided"]')
    await expect(decided).to_contain_text("Approved by alice")
    await expect(decided).to_contain_text(reason)  # shown as text: markup in data never becomes markup
    assert await page.locator("main img").count() == 0 and await page.evaluate("window.pwned") is None
    await expect(page.locator('[data-testid=timeline-entry][data-kind="action.executed"]').first).to_be_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "console-incident.png", full_page=True, animations="disabled")

    await page.get_by_test_id("logout").click()
    await page.wait_for_url("**/login")
    await page.goto("/")
    await page.wait_for_url("**/login")


async def test_a_viewer_sees_no_approve_button_but_reads_the_incident_and_its_report(console, browser):
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("vera", "viewer"))
    await page.goto(f"/incidents/{incident['id']}")
    drain = action(page, "drain_host")
    await expect(drain).to_have_attribute("data-status", "awaiting_approval")
    await expect(drain.get_by_test_id("cannot-decide")).to_contain_text("the role viewer may not decide")
    await expect(page.get_by_test_id("approve")).to_have_count(0)
    await expect(page.get_by_test_id("reject")).to_have_count(0)
    await expect(page.get_by_test_id("chat-question")).to_be_disabled()

    await page.get_by_test_id("report-link").click()
    await page.wait_for_url(f"**/reports/{incident['id']}")
    report = page.frame_locator("[data-testid=report-frame]")
    await expect(report.locator("body")).to_contain_text(incident["id"])
    await expect(report.locator("body")).to_contain_text("drain_host")

    await page.goto("/incidents/inc-nothing")
    await expect(page.get_by_test_id("page-error")).to_contain_text("404: no incident 'inc-nothing'")

    # An incident about an entity the topology does not hold: nothing could be ranked, and the page says why.
    # an hour on, so an incident of its own; a later sample moves event time on, so it is diagnosed
    await publish(console.bus, [anomaly("stray", "stray-0", 3600), sample("tick", "node-1", 3700)])
    stray = await wait_for(lambda: next((r for r in console.service.parts.store.incidents()
                                         if r["entities"] == ["stray-0"] and r["status"] == "escalated"), None),
                           30, message=lambda: f"incidents: {console.service.parts.store.incidents()}")
    await page.goto(f"/incidents/{stray['id']}")
    await expect(page.get_by_test_id("unlisted")).to_have_text(
        "Not in the topology, so their events were not weighed and none can be ranked as the cause: stray-0. "
        "Add them to the topology.")

    # A pod a rollout added, whose events say its service: weighed as an instance of it, and the page says so.
    pod = anomaly("newpod", "cartservice-7f9c", 7200)
    pod["data"]["attributes"]["service.name"] = "cartservice"
    await publish(console.bus, [pod, sample("tock", "node-1", 7300)])
    told = await wait_for(lambda: next((r for r in console.service.parts.store.incidents()
                                        if r["entities"] == ["cartservice-7f9c"] and r["root_causes"]), None),
                          30, message=lambda: f"incidents: {console.service.parts.store.incidents()}")
    await page.goto(f"/incidents/{told['id']}")
    await expect(page.get_by_test_id("described")).to_have_text(
        "Not in the topology, but weighed as instances of the service their events name (in brackets): "
        "cartservice-7f9c (cartservice). Add them to the topology.")
    await expect(page.get_by_test_id("unlisted")).to_have_count(0)


@pytest.fixture
def drain_needs_admin(rules_dir):
    """The drain_host contract in this test's rules names admin as its approver role."""
    contract = rules_dir / "contracts" / "drain_host.json"
    text = contract.read_text("utf-8")
    assert '"approver_role": "approver"' in text
    contract.write_text(text.replace('"approver_role": "approver"', '"approver_role": "admin"'), "utf-8")


async def test_the_incident_page_shows_the_apis_refusal_text(drain_needs_admin, console, browser):
    """What the API says on a 4xx reaches the person: a 403 (the contract wants an admin) and a 409
    (another approver decided first)."""
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("bob", "approver"))
    await page.goto(f"/incidents/{incident['id']}")
    drain = action(page, "drain_host")
    await drain.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("decision-error")).to_contain_text(
        "Could not approve #0 drain_host: 403: action 0 (drain_host) needs the role admin")
    await expect(drain.get_by_test_id("approve")).to_be_enabled()

    # Another admin rejects through the API while ada's page still shows the buttons (its refresh held back).
    page = await signed_in(browser, console, console.token("ada", "admin"))
    await page.goto(f"/incidents/{incident['id']}")
    drain = action(page, "drain_host")
    await expect(drain.get_by_test_id("approve")).to_be_visible()
    await page.route("**/api/v1/incidents/*", lambda route: route.abort())
    other = await page.context.request.post(f"/api/v1/incidents/{incident['id']}/actions/0/reject",
                                            data={"reason": "not during the sale"},
                                            headers={"Authorization": f"Bearer {console.token('root', 'admin')}"})
    assert other.status == 200, await other.text()
    await wait_for(lambda: console.incident()["actions"][0]["status"] == "rejected", 30)
    await drain.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("decision-error")).to_contain_text(
        "Could not approve #0 drain_host: 409: #0 drain_host on node-6 of inc-")
    await expect(page.get_by_test_id("decision-error")).to_contain_text("was already decided: reject by root")
    await page.unroute("**/api/v1/incidents/*")
    await expect(drain).to_have_attribute("data-status", "rejected", timeout=WAIT_MS)
    await expect(drain.get_by_test_id("approval")).to_contain_text("rejected by root")
    await expect(drain.get_by_test_id("approval")).to_contain_text("not during the sale")
    assert not any(a == "drain_host" for _, a, _ in console.target.applied)


async def test_a_wrong_token_is_refused_on_the_login_page(console, browser):
    context = await browser.new_context(base_url=console.url)
    page = await context.new_page()
    page.on("pageerror", lambda error: console.page_errors.append(f"{page.url}: {error}"))
    await page.goto("/chat")
    await page.wait_for_url("**/login?next=%2Fchat")  # no session: every page sends you to sign in
    await page.get_by_label("API token").fill("rtem_not-a-real-token")
    await page.get_by_test_id("login").click()
    await expect(page.get_by_test_id("login-error")).to_contain_text("not accepted")
    await expect(page.get_by_test_id("login-error")).to_contain_text("401")
    assert "/login" in page.url
    cookies = await context.cookies()
    assert not [c for c in cookies if c["name"] == "rtem_token"]

    await page.get_by_label("API token").fill(console.token("olga", "operator"))
    await page.get_by_test_id("login").click()
    await page.wait_for_url(f"{console.url}/chat")  # back where the user was headed
    cookie = next(c for c in await context.cookies() if c["name"] == "rtem_token")
    assert cookie["httpOnly"]


async def test_the_chat_page_answers_what_is_open_with_a_citation_into_the_timeline(console, browser):
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("olga", "operator"))
    await page.get_by_role("link", name="Chat").click()
    await page.wait_for_url("**/chat")
    await page.get_by_test_id("chat-question").fill("what is still open?")
    await page.get_by_test_id("chat-ask").click()
    await expect(page.get_by_test_id("answer-text")).to_contain_text(incident["id"])
    await expect(page.get_by_test_id("answer-text")).to_contain_text("awaiting approval")
    cited = page.get_by_test_id("citation-seq").first
    await expect(cited).to_have_attribute("href", re.compile(rf"^/incidents/{incident['id']}#seq-\d+$"))
    seq = await cited.get_attribute("data-seq")
    await cited.click()
    await page.wait_for_url(f"**/incidents/{incident['id']}#seq-{seq}")
    entry = page.locator(f"#seq-{seq}")
    await expect(entry).to_have_class(re.compile(r"\bcited\b"))

    # The incident's own chat box: a question nothing grounds says so, and shows what was searched.
    await page.get_by_test_id("chat-question").fill("why did paymentservice-9 restart?")
    await page.get_by_test_id("chat-ask").click()
    await expect(page.get_by_test_id("answer-text")).to_contain_text("I don't know")
    await expect(page.get_by_test_id("searched")).to_be_visible()


async def test_the_rules_page_shows_the_rules_in_force_and_a_refused_reload(console, browser, rules_dir):
    viewer = await signed_in(browser, console, console.token("vera", "viewer"))
    await viewer.get_by_role("link", name="Rules").click()
    await expect(viewer.get_by_test_id("rules-files")).to_contain_text("default.yaml")
    await expect(viewer.get_by_test_id("rules-digests")).to_contain_text(console.service.reloader.status()["digest"])
    await expect(viewer.get_by_test_id("reload-rules")).to_be_hidden()

    page = await signed_in(browser, console, console.token("rita", "rule_author"))
    await page.goto("/rules")
    await page.get_by_test_id("reload-rules").click()
    await expect(page.get_by_test_id("reload-notice")).to_contain_text("Rules unchanged")

    guardrails = rules_dir / "guardrails" / "default.yaml"
    lines = guardrails.read_text("utf-8").count("\n")
    guardrails.write_text(guardrails.read_text("utf-8") + BROKEN, "utf-8")
    await page.get_by_test_id("reload-rules").click()
    error = page.get_by_test_id("reload-error")
    await expect(error).to_contain_text("422: rules refused; the previous rules stay active")
    await expect(error).to_contain_text(re.compile(rf"default\.yaml:{lines + 3}:\d+: .*scale_uot"))
    await expect(page.get_by_test_id("rules-last-refusal")).to_contain_text("scale_uot")
