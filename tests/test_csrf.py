"""Cross-site requests in a real browser (Debian's chromium via Playwright) against the live service: a page
served from another port of 127.0.0.1 is the same *site* as the console, so `SameSite=Strict` lets the
browser send the console's cookie to it. Its forms and fetch() calls must not approve, reject or reload
anything (403, audited), while the console itself still does all three under its Content-Security-Policy."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.live import wait_for
from tests.test_console import (BROKEN, action, browser, console, expect, rules_dir,  # noqa: F401  (fixtures)
                                signed_in)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Attacker:
    """A tiny web server on another port of 127.0.0.1, serving pages that aim at the console."""

    def __init__(self, pages: dict[str, str]):
        page_of = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's name
                body = page_of.get(self.path, "not here").encode()
                self.send_response(200 if self.path in page_of else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Attacker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def form_page(url: str) -> str:
    # An empty form: no body for the API to reject as a wrong content type, so only the CSRF check stands.
    return f'<!doctype html><form method="POST" action="{url}"><button id="go">win a prize</button></form>'


FETCHES = """<!doctype html><script>
window.attack = async (urls) => {
  const results = [];
  for (const url of urls) {
    // no-cors: a "simple" request the browser sends with the cookie; the page cannot read the answer
    try { await fetch(url, {method: "POST", mode: "no-cors", credentials: "include"}); results.push("sent"); }
    catch (err) { results.push("failed: " + err.message); }
    // with the console's header: needs a CORS preflight, which the API never grants
    try {
      const r = await fetch(url, {method: "POST", credentials: "include", headers: {"X-Rtem-Console": "1"}});
      results.push("answered " + r.status);
    } catch (err) { results.push("blocked"); }
  }
  return results;
};
</script>"""


def audit(running, kind: str) -> list:
    return running.service.parts.audit.records(kind=kind)


async def test_a_page_on_another_port_cannot_act_through_the_consoles_cookie(console, browser, rules_dir):  # noqa: F811
    await console.cpu_fault()
    incident = await console.awaiting_approval()
    index = next(a["index"] for a in incident["actions"] if a["type"] == "drain_host")
    base = f"{console.url}/api/v1"
    approve = f"{base}/incidents/{incident['id']}/actions/{index}/approve"
    reject = f"{base}/incidents/{incident['id']}/actions/{index}/reject"
    reload = f"{base}/rules/reload"
    # Broken rules on disk: a reload through the API would be judged, refused and recorded as rules.refused.
    guardrails = rules_dir / "guardrails" / "default.yaml"
    guardrails.write_text(guardrails.read_text("utf-8") + BROKEN, "utf-8")

    page = await signed_in(browser, console, console.token("ada", "admin"))
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    denied_before = len(audit(console, "access.denied"))

    pages = {"/approve": form_page(approve), "/reject": form_page(reject), "/reload": form_page(reload),
             "/fetch": FETCHES}
    with Attacker(pages) as attacker:
        evil = await page.context.new_page()  # the same browser profile: the console's cookie is there
        for name in ("approve", "reject", "reload"):
            await evil.goto(f"{attacker.url}/{name}")
            async with evil.expect_navigation() as navigation:
                await evil.click("#go")
            answer = await navigation.value
            assert answer.status == 403, (name, answer.status, await answer.text())
            assert "cross-site request refused" in (await answer.json())["error"]
        await evil.goto(f"{attacker.url}/fetch")
        results = await evil.evaluate("urls => window.attack(urls)", [approve, reject, reload])
        assert results == ["sent", "blocked"] * 3, results
        await evil.close()

    # Nothing was decided or reloaded, and every refused attempt is on record with the token's name.
    denied = audit(console, "access.denied")[denied_before:]
    assert len(denied) == 6, [d.reasons for d in denied]
    assert {d.inputs["token"] for d in denied} == {"ada"} and {d.decision["status"] for d in denied} == {403}
    assert all(d.reasons[0].startswith("cross-site request refused: Origin http://127.0.0.1:") for d in denied)
    assert console.incident()["actions"][index]["status"] == "awaiting_approval"
    assert not audit(console, "approval.decided")
    assert not [r for r in audit(console, "rules.refused") if r.inputs["via"] == "api"]

    # The console itself still acts, under its Content-Security-Policy.
    await page.goto(f"/incidents/{incident['id']}")
    drain = action(page, "drain_host")
    await drain.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("decision-notice")).to_contain_text("Approved #0 drain_host as ada")
    await wait_for(lambda: audit(console, "approval.decided"), 10)
    await page.goto("/rules")
    await page.get_by_test_id("reload-rules").click()
    await expect(page.get_by_test_id("reload-error")).to_contain_text("422: rules refused")
    assert [r for r in audit(console, "rules.refused") if r.inputs["via"] == "api"]

    # The report's own styles apply in its sandboxed frame; nothing the console does trips the policy.
    await page.goto(f"/reports/{incident['id']}")
    report = page.frame_locator("[data-testid=report-frame]")
    await expect(report.locator("body")).to_contain_text(incident["id"])
    collapse = await report.locator("table").first.evaluate("t => getComputedStyle(t).borderCollapse")
    assert collapse == "collapse"
    assert not violations, violations

    # The console can sign out and in again (both refused from another page, see tests/test_api_hardening.py).
    await page.get_by_test_id("logout").click()
    await page.wait_for_url("**/login")
    assert not [c for c in await page.context.cookies() if c["name"] == "rtem_token"]


async def test_the_console_cannot_be_framed_by_another_page(console, browser):  # noqa: F811
    token = console.token("vera", "viewer")
    page = await signed_in(browser, console, token)
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if re.search(r"frame-ancestors|X-Frame-Options", m.text)
            else None)
    framing = f'<!doctype html><iframe id="f" src="{console.url}/"></iframe>'
    with Attacker({"/frame": framing}) as attacker:
        await page.goto(f"{attacker.url}/frame")
        await wait_for(lambda: blocked, 10)
        frame = page.frame_locator("#f")
        await expect(frame.get_by_test_id("who-name")).to_have_count(0)
