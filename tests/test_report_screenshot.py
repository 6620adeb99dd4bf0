"""The HTML rationale report in a real browser (Debian's chromium via Playwright, as tests/test_console.py
drives it): no console errors, a timeline chart with both labelled axes and a legend, nothing overlapping or
overflowing at a desktop and a phone width, and screenshots that are not blank."""

from __future__ import annotations

import base64
import sqlite3

import pytest

from tests.helpers import RECORDING, analyze
from tests.test_console import browser  # noqa: F401  (the fixture: chromium launched with the console tests' flags)

pytestmark = pytest.mark.integration

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> str:
    """The HTML report of the recorded analysis (`rtem analyze` of the example recording)."""
    out = tmp_path_factory.mktemp("analysis")
    analyze(RECORDING, "--out", out / "out")
    db = out / "out" / "run" / "rtem.db"
    [incident_id] = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM incidents WHERE status != 'merged'")]
    from agent.audit import AuditLog
    from agent.report import build_report
    from agent.store import IncidentStore
    with AuditLog(db) as audit:
        return build_report(IncidentStore(db, readonly=True), audit, incident_id).render("html")


async def opened(browser, url: str, viewport: dict, errors: list[str]):  # noqa: F811
    """A page at `url` in a fresh context of `viewport`, its console errors and uncaught errors kept."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on("console", lambda message: message.type == "error" and errors.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: errors.append(f"page: {error}"))
    await page.goto(url)
    return page


# Bounding boxes of the elements a selector finds, in page coordinates (SVG text included).
BOXES = """(selector) => [...document.querySelectorAll(selector)].map(e => {
  const r = e.getBoundingClientRect();
  return {text: e.textContent, left: r.left + scrollX, right: r.right + scrollX, top: r.top + scrollY,
          bottom: r.bottom + scrollY, width: r.width, height: r.height};
})"""

# The PNG decoded by the browser itself (no image library needed): mean and variance of its grey levels.
PIXELS = """async (src) => {
  const img = new Image(); img.src = src; await img.decode();
  const canvas = document.createElement('canvas'); canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < data.length; i += 16) { const g = (data[i] + data[i + 1] + data[i + 2]) / 3; sum += g; sq += g * g; n++; }
  const mean = sum / n; return {width: img.width, height: img.height, mean, variance: sq / n - mean * mean};
}"""


def overlapping(boxes: list[dict], slack: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of boxes that overlap by more than `slack` pixels each way."""
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if (min(a["right"], b["right"]) - max(a["left"], b["left"]) > slack
                    and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > slack):
                pairs.append((a["text"], b["text"]))
    return pairs


async def pixel_stats(page, png: bytes) -> dict:
    return await page.evaluate(PIXELS, "data:image/png;base64," + base64.b64encode(png).decode())


async def check_not_blank(page, png: bytes, viewport: dict) -> None:
    stats = await pixel_stats(page, png)
    assert stats["width"] >= viewport["width"], stats
    assert stats["variance"] > 100, f"the screenshot looks blank: {stats}"


@pytest.mark.parametrize("size", VIEWPORTS)
async def test_the_report_renders_two_labelled_axes_and_a_legend_without_overlap(browser, report_html, tmp_path,  # noqa: F811
                                                                                   size):
    viewport = VIEWPORTS[size]
    path = tmp_path / "report.html"
    path.write_text(report_html, "utf-8")
    errors: list[str] = []
    page = await opened(browser, path.as_uri(), viewport, errors)

    chart = page.get_by_test_id("timeline-chart")
    svg = chart.locator("svg")
    assert await svg.is_visible()
    for axis, title in (("event-time", "event time, UTC"), ("wall-clock", "rtem's wall clock, UTC")):
        group = svg.locator(f'g.axis[data-axis="{axis}"]')
        assert await group.count() == 1, f"one {axis} axis"
        assert title in await group.locator("text.axis-title").text_content()
        ticks = await page.evaluate(BOXES, f'g.axis[data-axis="{axis}"] text.tick')
        assert len(ticks) >= 2, f"the {axis} axis has ticks: {ticks}"
        assert not overlapping(ticks), f"{axis} tick labels overlap: {overlapping(ticks)}"
        assert all(t["text"].strip() for t in ticks)
    panels = [t.strip() for t in await svg.locator("text.panel-title").all_text_contents()]
    assert panels[0].startswith("Events by event time") and panels[1].startswith("Decisions by rtem's wall clock")
    legend = svg.locator("g.legend")
    assert await legend.count() == 1
    legend_text = await legend.text_content()
    for item in ("critical events", "error events", "warning events", "decision record"):
        assert item in legend_text
    assert not overlapping(await page.evaluate(BOXES, "g.legend text")), "legend labels overlap"
    # Every panel's lane labels sit left of the plot and apart from one another.
    labels = await page.evaluate(BOXES, "svg g.lanes > text")
    assert labels and not overlapping(labels), overlapping(labels)

    # Nothing spills out of the page sideways: wide tables and the chart scroll inside their own boxes.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], f"the page is {width}px wide in a {viewport['width']}px viewport"
    boxes = await page.evaluate(BOXES, "h1, h2, .scroll, .chart, p.note")
    outside = [b["text"][:40] for b in boxes if b["left"] < -0.5 or b["right"] > viewport["width"] + 0.5]
    assert not outside, f"elements outside the viewport: {outside}"
    headings = await page.evaluate(BOXES, "h2")
    assert [h["text"] for h in headings][:3] == ["Summary", "Timeline", "Decisions"]
    assert all(h["width"] > 0 and h["height"] > 0 for h in headings)
    assert not overlapping(headings)

    png = await page.screenshot(path=tmp_path / f"report-{size}.png", full_page=True, animations="disabled")
    await check_not_blank(page, png, viewport)
    assert not errors, errors
