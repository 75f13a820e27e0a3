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
