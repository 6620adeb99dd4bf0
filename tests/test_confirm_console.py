"""The incident page's confirmed-cause form in a real browser (Debian's chromium, Playwright) against the
live service: an operator confirms a cause, a typo is refused with the API's message, a correction shows;
what was typed is shown as text."""

from __future__ import annotations

import pytest

from agent.audit import AuditLog
from tests.test_console import browser, console, expect, rules_dir, signed_in  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_an_operator_confirms_and_corrects_the_cause_in_the_browser(console, browser):  # noqa: F811
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("olga", "operator"))
    await page.goto(f"/incidents/{incident['id']}")
    await expect(page.get_by_test_id("confirmed-cause")).to_contain_text("Not confirmed yet")
    await page.get_by_test_id("confirm-cause").fill("<b>node-66</b>")
    await page.get_by_test_id("confirm").click()
    await expect(page.get_by_test_id("confirm-error")).to_contain_text("'<b>node-66</b>' is not an entity")
    await page.get_by_test_id("confirm-cause").fill("node-6")
    await page.get_by_test_id("confirm-note").fill("<i>host</i> overloaded")
    await page.get_by_test_id("confirm").click()
    await expect(page.get_by_test_id("confirmed-cause")).to_contain_text("node-6")
    await expect(page.get_by_test_id("confirmed-cause")).to_contain_text("<i>host</i> overloaded")  # as text
    await expect(page.locator("[data-testid=confirmed-cause] i")).to_have_count(0)
    await expect(page.get_by_test_id("confirm")).to_have_text("Correct")
    with AuditLog(console.service.parts.store.path) as audit:
        [record] = audit.records(incident_id=incident["id"], kind="cause.confirmed")
    assert (record.decision["cause"], record.decision["by"], record.node) == ("node-6", "olga", "api")
