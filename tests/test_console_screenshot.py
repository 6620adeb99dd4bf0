"""The console's incident page and its report page in a real browser (Debian's chromium via Playwright, with
tests/test_console.py's service, flags and sign-in): an incident waiting for approval renders with no console
errors, its parts are visible and neither overlap nor overflow at 1280x800 and at 390px, the report frame
shows the timeline's two labelled axes and who must approve, and the screenshots are not blank."""

from __future__ import annotations

import pytest

# The console tests' fixtures and helpers: the live service, a launched chromium, a copy of the rules to use.
from tests.test_console import browser, console, rules_dir, signed_in  # noqa: F401
from tests.test_report_screenshot import BOXES, VIEWPORTS, check_not_blank, overlapping

pytestmark = [pytest.mark.integration, pytest.mark.slow]

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

SECTIONS = ("summary", "hypotheses", "actions", "timeline")


async def waiting_incident_page(console, browser, errors: list[str]):  # noqa: F811
    """A viewer's page, signed in, with an incident waiting for approval of drain_host on node-6."""
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    page = await signed_in(browser, console, console.token("vera", "viewer"))
    page.on("console", lambda message: message.type == "error" and errors.append(f"{page.url}: {message.text}"))
    return page, incident


async def test_the_incident_page_and_its_report_render_cleanly_at_desktop_and_phone_widths(console, browser,  # noqa: F811
                                                                                             tmp_path):
    errors: list[str] = []
    page, incident = await waiting_incident_page(console, browser, errors)

    for size, viewport in VIEWPORTS.items():
        await page.set_viewport_size(viewport)
        await page.goto(f"/incidents/{incident['id']}")
        await expect(page.get_by_test_id("hypotheses")).to_contain_text("node-6")
        await expect(page.locator('[data-testid=action][data-type="drain_host"]')).to_have_attribute(
            "data-status", "awaiting_approval")
        await expect(page.locator('[data-testid=timeline-entry][data-kind="approval.requested"]')).to_be_visible()
        for section in SECTIONS:
            await expect(page.get_by_test_id(section)).to_be_visible()

        # Everything the page shows under its header stays inside the viewport (the header: the test below).
        wide = await page.evaluate(BOXES, "main, main *")
        outside = [b["text"][:40] for b in wide if b["width"] and b["right"] > viewport["width"] + 0.5]
        assert not outside, f"{size}: wider than the viewport: {outside[:5]}"
        headings = await page.evaluate(BOXES, "main h1, main h2")
        assert len(headings) >= len(SECTIONS) + 1 and all(h["width"] > 0 and h["height"] > 0 for h in headings)
        assert not overlapping(headings), f"{size}: headings overlap: {overlapping(headings)}"
        parts = await page.evaluate(BOXES, "main > section")
        assert not overlapping(parts), f"{size}: sections overlap: {overlapping(parts)}"
        outside = [b["text"][:40] for b in parts if b["left"] < -0.5 or b["right"] > viewport["width"] + 0.5]
        assert not outside, f"{size}: sections outside the viewport: {outside}"
        png = await page.screenshot(path=tmp_path / f"incident-{size}.png", full_page=True, animations="disabled")
        await check_not_blank(page, png, viewport)

        await page.goto(f"/reports/{incident['id']}")
        frame = page.frame_locator("[data-testid=report-frame]")
        await expect(frame.locator("h1")).to_contain_text(incident["id"])
        chart = frame.get_by_test_id("timeline-chart")
        await expect(chart.locator('g.axis[data-axis="event-time"] text.axis-title')).to_contain_text("event time, UTC")
        await expect(chart.locator('g.axis[data-axis="wall-clock"] text.axis-title')).to_contain_text(
            "rtem's wall clock, UTC")
        await expect(chart.locator("g.legend")).to_contain_text("decision record")
        approvals = frame.locator("h2", has_text="Approvals").locator("xpath=following-sibling::div[1]")
        await expect(approvals).to_contain_text("to be approved by a person with the role approver (or an admin)")
        box = await page.get_by_test_id("report-frame").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5, f"{size}: frame {box}"
        png = await page.screenshot(path=tmp_path / f"report-{size}.png", animations="disabled")
        await check_not_blank(page, png, viewport)

    assert not errors, errors


async def test_the_console_header_fits_a_phone(console, browser):  # noqa: F811
    errors: list[str] = []
    page, incident = await waiting_incident_page(console, browser, errors)
    await page.set_viewport_size(VIEWPORTS["phone"])
    await page.goto(f"/incidents/{incident['id']}")
    await expect(page.get_by_test_id("hypotheses")).to_contain_text("node-6")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORTS["phone"]["width"], f"the incident page is {width}px wide in a 390px viewport"
    assert not errors, errors
