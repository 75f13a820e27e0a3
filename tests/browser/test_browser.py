"""A real browser through the gateway: Debian's chromium, driven by Playwright.

An employee logs in to the demo CRM's own form, is held at the gateway's 2FA
page, types the code from their authenticator, reaches the dashboard, clicks
around and logs out. Then someone outside the office (seen through a trusted
proxy as 203.0.113.9) gets the deny page with their IP and a request id, the
same id the gateway logged. Screenshots go to ``test-artifacts/browser/``.

The browser is never downloaded: without /usr/bin/chromium the tests fail and
say how to install it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.adversarial.scripted_crm import rig
from tests.adversarial.test_crm_answers import jar
from tests.adversarial.test_crm_answers import login as crm_login
from tests.e2e.harness import stack
from tests.e2e.test_identity import JIM_SECRET, policy_with, with_2fa

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
OUTSIDE_IP = "203.0.113.9"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
                    "the browser tests never download one")
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield instance
        finally:
            await instance.close()


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_login_2fa_browse_and_log_out_in_a_real_browser(tmp_path: Path, browser: Browser) -> None:
    extra = with_2fa(tmp_path)
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        context = await browser.new_context(base_url=s.url(""))
        page = await context.new_page()

        await page.goto("/login")
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        await page.get_by_label("Username").fill("jim")
        await page.get_by_label("Password").fill("demo")
        await shot(page, "01-login")
        await page.get_by_role("button", name="Log in").click()

        # Held at the gateway: the CRM's session cookie has not reached the browser.
        await expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
        assert page.url.startswith(s.url("/_gateway/2fa"))
        assert "Signed in as jim" in await page.inner_text("main")
        assert "crm_session" not in {c["name"] for c in await context.cookies()}
        await page.get_by_label("Code").fill(pyotp.TOTP(JIM_SECRET).now())
        await shot(page, "02-second-factor")
        await page.get_by_role("button", name="Continue").click()

        await expect(page.get_by_text("Welcome, jim")).to_be_visible()
        assert page.url == s.url("/dashboard")
        assert "crm_session" in {c["name"] for c in await context.cookies()}
        await shot(page, "03-dashboard")

        for link, heading in [("Projects", "Projects"), ("Contacts", "Contacts"), ("Time clock", "Time clock")]:
            await page.locator("#top").get_by_role("link", name=link).click()
            await expect(page.get_by_role("heading", name=heading)).to_be_visible()
            await expect(page.get_by_text("Logged in as jim")).to_be_visible()
        await shot(page, "04-browsing")

        await page.locator("#top").get_by_role("link", name="Log out").click()
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        await shot(page, "05-logged-out")
        # The session is over on both sides: the dashboard sends the browser back to the login.
        await page.goto("/dashboard")
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        await context.close()
        assert [e["user"] for e in s.logs.events("mfa.passed")] == ["jim"]
        assert s.logs.events("session.logout")


async def test_a_blocked_employee_sees_the_deny_page_with_their_ip_and_the_logged_request_id(
    tmp_path: Path, browser: Browser
) -> None:
    async with stack(tmp_path, client_ip={"trusted_proxies": ["127.0.0.1"]}) as s:
        context = await browser.new_context(base_url=s.url(""), extra_http_headers={"X-Forwarded-For": OUTSIDE_IP})
        page = await context.new_page()
        response = await page.goto("/dashboard")
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        await expect(page.get_by_text("The CRM cannot be used from the network you are connected to.")).to_be_visible()
        assert await page.inner_text("#client-ip") == OUTSIDE_IP
        request_id = await page.inner_text("#request-id")
        assert request_id == await response.header_value("X-Request-ID")
        assert await page.inner_text("#reason") == "ip_not_allowed"
        body = await page.inner_text("body")
        assert "Lock-down" not in body, "rule titles are never shown"
        await shot(page, "06-denied")
        await context.close()
        denied = [e for e in s.logs.events("access.denied") if e["request_id"] == request_id]
        assert len(denied) == 1
        assert denied[0]["client_ip"] == OUTSIDE_IP and denied[0]["peer_ip"] == "127.0.0.1"


@pytest.mark.parametrize("shape", [
    "pref=1 crmgw_session={bob}; Path=/",  # a value the CRM reflects, with a space in it
    "=crmgw_session={bob}; Path=/",  # a nameless cookie: the browser sends its value alone
    "pref=1 crmgw_session=junk; Path=/",  # ... or just log jim out of the gateway
    "crmgw_session={bob}; Path=/page",  # named as the gateway's, for a narrower path
])
async def test_a_crm_page_cannot_plant_another_users_gateway_session_in_a_browser(
    tmp_path: Path, browser: Browser, shape: str
) -> None:
    """Review 8: a CRM Set-Cookie named `pref` whose value holds `crmgw_session=<bob's>` was stored by
    Chromium and sent back as `pref=1 crmgw_session=...`, which aiohttp's cookie parser (splitting at
    spaces too) read as the gateway's session: jim's browser became bob's."""
    async with rig(tmp_path) as r:
        bob = r.client()
        assert (await crm_login(bob, r, "bob")).status == 302
        bobs = jar(bob, r)["crmgw_session"]
        context = await browser.new_context(base_url=r.url(""))
        page = await context.new_page()
        response = await context.request.post("/login", form={"username": "jim", "password": "demo"},
                                              max_redirects=0)
        assert response.status == 302
        whoami = "fetch('/_gateway/whoami').then(r => r.json()).then(j => j.user)"
        await page.goto("/page")
        assert await page.evaluate(whoami) == "jim"
        r.script.page_headers = [("Set-Cookie", shape.format(bob=bobs))]
        await page.goto("/page")
        r.script.page_headers = []
        assert r.logs.events("upstream.own_cookie_dropped")
        assert await page.evaluate(whoami) == "jim"
        await page.goto("/page")
        assert await page.content() and "page for jim" in await page.content()
        await context.close()
