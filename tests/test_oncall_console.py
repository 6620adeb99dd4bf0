"""The incident page's on-call buttons in a real browser (Debian's chromium, Playwright) against the live
service: an operator acknowledges, assigns, comments (shown as text, never as markup) and resolves; a
viewer sees the state and no buttons."""

from __future__ import annotations

import pytest

from agent.audit import AuditLog
from tests.test_console import browser, console, expect, rules_dir, signed_in  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_an_operator_acknowledges_assigns_comments_and_resolves_in_the_browser(console, browser):  # noqa: F811
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("olga", "operator"))
    await page.goto(f"/incidents/{incident['id']}")
    await page.get_by_test_id("oncall-ack").click()
    await expect(page.get_by_test_id("acknowledged-by")).to_contain_text("by olga")
    await page.get_by_test_id("assign-to").fill("bob")
    await page.get_by_test_id("oncall-assign").click()
    await expect(page.get_by_test_id("assignee")).to_have_text("bob")
    await page.get_by_test_id("comment-text").fill("<b>not bold</b>")
    await page.get_by_test_id("oncall-comment").click()
    await expect(page.get_by_test_id("comment")).to_contain_text("<b>not bold</b>")  # as text
    await expect(page.locator("[data-testid=comment] b")).to_have_count(0)
    await page.get_by_test_id("oncall-resolve").click()  # no reason: the API's refusal is shown
    await expect(page.get_by_test_id("oncall-error")).to_contain_text("Could not resolve")
    await page.get_by_test_id("oncall-reason").fill("host replaced")
    await page.get_by_test_id("oncall-resolve").click()
    await expect(page.get_by_test_id("incident-status")).to_contain_text("resolved")
    await expect(page.get_by_test_id("oncall-reopen")).to_be_visible()
    with AuditLog(console.service.parts.store.path) as audit:
        kinds = [r.kind for r in audit.records(incident_id=incident["id"]) if r.kind.startswith("incident.")]
        by = {r.inputs.get("by") for r in audit.records(incident_id=incident["id"], kind="incident.resolved")}
    assert {"incident.acknowledged", "incident.assigned", "incident.commented", "incident.resolved"} <= set(kinds)
    assert by == {"olga"}

    viewer = await signed_in(browser, console, console.token("vera", "viewer"))
    await viewer.goto(f"/incidents/{incident['id']}")
    await expect(viewer.get_by_test_id("assignee")).to_have_text("bob")
    await expect(viewer.get_by_test_id("oncall-actions")).to_have_count(0)
