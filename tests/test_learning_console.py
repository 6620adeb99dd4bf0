"""The console's Learning page in a real browser (Debian's chromium, Playwright) against the live service:
what was learned from a confirmed cause and rtem's record against it, read by a viewer; a scoped token told
why it may not read it; an admin forgets, and the page says so."""

from __future__ import annotations

import pytest

from agent.audit import AuditLog
from tests.live import anomaly, publish
from tests.test_console import browser, console, expect, rules_dir, signed_in  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_the_learning_page_shows_what_was_learned_and_an_admin_forgets_it(console, browser):  # noqa: F811
    # node-6's CPU, and a container on it with anomalies of its own: the person confirms the container,
    # which rtem did not rank first; where it was wrong is what there is to learn
    await publish(console.bus, [anomaly(f"c{i}", "cartservice2-0", i, metric="container_threads") for i in range(3)])
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    ranked = [c["entity"] for c in incident["root_causes"]]
    second = "cartservice2-0"
    assert ranked[0] == "node-6" and second in ranked[1:3], ranked
    operator = await signed_in(browser, console, console.token("olga", "operator"))
    await operator.goto(f"/incidents/{incident['id']}")
    await operator.get_by_test_id("confirm-cause").fill(second)
    await operator.get_by_test_id("confirm").click()
    await expect(operator.get_by_test_id("confirmed-cause")).to_contain_text(second)

    viewer = await signed_in(browser, console, console.token("vera", "viewer"))
    await viewer.get_by_role("link", name="Learning").click()
    await viewer.wait_for_url("**/learning")
    summary = viewer.get_by_test_id("learning-summary")
    await expect(summary).to_contain_text("1 confirmed incidents; learned from 1")
    await expect(viewer.get_by_test_id("learning-record")).to_contain_text(
        "rtem had ranked the confirmed cause first in 0 of 1, in its top 3 in 1.")
    features = viewer.get_by_test_id("learning-features")
    await expect(features.locator("tbody tr").first).to_contain_text("learned from 1 past incident")
    await expect(features).to_contain_text("the confirmed cause in 1 of")  # in words, with the counts
    await expect(viewer.get_by_test_id("forget-form")).to_be_hidden()

    scoped, _ = console.tokens.create("sam", "viewer", services=["cartservice"])
    outsider = await signed_in(browser, console, scoped)
    await outsider.goto("/learning")
    await expect(outsider.get_by_test_id("page-error")).to_contain_text("scoped")

    admin = await signed_in(browser, console, console.token("ada", "admin"))
    await admin.goto("/learning")
    await admin.get_by_test_id("forget-note").fill("<b>new</b> platform")
    await admin.get_by_test_id("forget").click()
    await expect(admin.get_by_test_id("forget-notice")).to_contain_text("by ada: 1 confirmed causes are no longer")
    await expect(admin.get_by_test_id("learning-summary")).to_contain_text("0 confirmed incidents (since the reset")
    with AuditLog(console.service.parts.store.path) as audit:
        [record] = audit.records(kind="learn.reset")
    assert (record.node, record.inputs["by"], record.inputs["note"]) == ("api", "ada", "<b>new</b> platform")
