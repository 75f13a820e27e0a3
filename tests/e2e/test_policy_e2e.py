"""The policy through the running gateway and the demo CRM (issue 3): who gets where, from where."""

from __future__ import annotations

import asyncio
import copy
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import server
from tests.e2e.harness import HOME, OFFICE, POLICY, WAREHOUSE, Stack, stack

MOBILE_UA = "AcmeCRM-Mobile/5.2 (Android 14)"


async def logged_in(s: Stack, user: str, source: str, **client_kwargs: Any) -> aiohttp.ClientSession:
    client = s.client(source, **client_kwargs)
    async with client.post(s.url("/login"), data={"username": user, "password": "demo"},
                           allow_redirects=False) as resp:
        assert resp.status == 302, f"{user} from {source}: {resp.status}"
    return client


async def status(client: aiohttp.ClientSession, s: Stack, method: str, path: str) -> int:
    async with client.request(method, s.url(path), allow_redirects=False) as resp:
        await resp.read()
        return resp.status


def reached(records: list[dict[str, Any]], method: str, path: str) -> bool:
    return any(r["method"] == method and r["path"] == path for r in records)


@pytest.mark.parametrize(
    ("source", "expected"),
    [(OFFICE, 302), (WAREHOUSE, 302), (HOME, 403), ("127.0.0.9", 403)],
    ids=["office-listed", "warehouse-listed", "home-not-listed", "elsewhere-not-listed"],
)
async def test_lockdown_by_client_address(tmp_path: Path, source: str, expected: int) -> None:
    async with stack(tmp_path) as s:
        async with s.client(source).get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == expected
        async with s.client(source).get(s.url("/login")) as resp:  # public: the login page always loads
            assert resp.status == 200


async def test_clock_in_worked_cases_through_the_gateway(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        jim_at_warehouse = await logged_in(s, "jim", WAREHOUSE)
        assert await status(jim_at_warehouse, s, "POST", "/timeclock/clock-in") in (200, 302)
        alice_at_warehouse = await logged_in(s, "alice", WAREHOUSE)
        assert await status(alice_at_warehouse, s, "POST", "/timeclock/clock-in") == 403
        jim_in_office = await logged_in(s, "jim", OFFICE)
        assert await status(jim_in_office, s, "POST", "/timeclock/clock-in") == 403
        # alice's override lets her use the CRM from home, but not clock in there.
        alice_home = await logged_in(s, "alice", HOME)
        assert await status(alice_home, s, "GET", "/dashboard") == 200
        assert await status(alice_home, s, "POST", "/timeclock/clock-in") == 403
        clock_ins = [r for r in await s.crm_requests() if r["path"] == "/timeclock/clock-in"]
        assert len(clock_ins) == 1  # only jim at the warehouse got through
        denied = [e for e in s.logs.events("access.denied") if e["path"] == "/timeclock/clock-in"]
        assert {e["user"] for e in denied} == {"alice", "jim"}
        assert all(e["reason"] == "function_blocked" and e["functions"] == ["clock-in"] for e in denied)


async def test_pat_is_blocked_from_billing_in_the_office_too(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        pat = await logged_in(s, "pat", OFFICE)
        assert await status(pat, s, "GET", "/projects") == 200
        for path in ("/billing", "/billing/2026/q3", "/invoices/17"):
            assert await status(pat, s, "GET", path) == 403, path
        jim = await logged_in(s, "jim", OFFICE)
        assert await status(jim, s, "GET", "/billing") == 200
        records = await s.crm_requests()
        assert not [r for r in records if r["path"].startswith("/invoices")]
        event = [e for e in s.logs.events("access.denied") if e["user"] == "pat"][-1]
        assert event["rule_title"] == "PMs stay out of billing"


async def test_mobile_user_agent_passes_from_anywhere_on_mobile_paths_only(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        app = await logged_in(s, "bob", HOME, headers={"User-Agent": MOBILE_UA})
        async with app.get(s.url("/api/mobile/me")) as resp:
            assert resp.status == 200
        async with app.get(s.url("/api/mobile/contacts/export")) as resp:
            assert resp.status == 403
            body = await resp.json()  # the mobile channel gets JSON denials
            assert body["error"] == "access_denied" and body["reason"] == "function_blocked"
            assert body["client_ip"] == HOME and body["request_id"] == resp.headers["X-Request-ID"]
        # The app's User-Agent on a web path is channel web: locked down like any browser.
        async with app.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 403
        async with app.get(s.url("/_gateway/whoami")) as resp:
            assert (await resp.json())["channel"] == "web"
        records = await s.crm_requests()
        assert not reached(records, "GET", "/api/mobile/contacts/export")
        assert not reached(records, "GET", "/dashboard")


async def test_a_reload_changes_the_outcome_without_a_restart(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        async with office.get(s.url("/projects"), allow_redirects=False) as resp:
            assert resp.status == 302  # reaches the CRM (which wants a login)
        policy = copy.deepcopy(POLICY)
        policy["functions"]["projects"] = {"paths": ["/projects/**"]}
        policy["rules"].append({"title": "Projects closed for the audit", "action": "block",
                                "function": "projects"})
        s.rewrite_policy(policy)
        assert await s.server.reload("test")
        async with office.get(s.url("/projects"), allow_redirects=False) as resp:
            assert resp.status == 403
        assert s.logs.events("config.reloaded")


async def test_a_reload_frees_the_policy_it_replaced(tmp_path: Path) -> None:
    """Nothing keeps the old policy once the requests using it are done: not the server's own start-up
    config, not the reload's loader (at 100,000 rules a policy kept is ~90 MiB for good)."""
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        first = weakref.ref(s.server.gateway.config.policy)
        assert await status(office, s, "GET", "/projects") == 302
        for attempt in range(2):
            policy = copy.deepcopy(POLICY)
            policy["rules"].append({"title": f"Audit {attempt}", "action": "block", "networks": ["192.0.2.1"]})
            s.rewrite_policy(policy)
            second = weakref.ref(s.server.gateway.config.policy)
            assert await s.server.reload("test")
            assert await status(office, s, "GET", "/projects") == 302
            # the client has its answer a moment before the server's handler is done with the request
            for _ in range(200):
                if s.server.gateway.in_flight == 0 and first() is None and second() is None:
                    break
                await asyncio.sleep(0.01)
            assert first() is None
            assert second() is None
        assert s.server.gateway.config.policy is not None


async def test_a_refused_reload_keeps_the_policy_and_gives_back_what_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo: the running policy stays, and the memory the refused load took is handed back at once
    (at 100,000 rules ~20 MiB stayed until the next good reload)."""
    trims: list[int] = []
    monkeypatch.setattr(server, "trim_heap", lambda: trims.append(1))
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        running = s.server.gateway.config.policy
        policy = copy.deepcopy(POLICY)
        policy["rules"].append({"title": "A typo", "action": "blok", "networks": ["192.0.2.1"]})
        s.rewrite_policy(policy)
        trims.clear()  # (the start trims too)
        assert not await s.server.reload("test")
        assert trims, "the heap was not trimmed after the refused load"
        assert s.server.gateway.config.policy is running
        assert await status(office, s, "GET", "/projects") == 302
        [failed] = s.logs.events("config.reload_failed")
        assert "action must be allow or block" in failed["errors"][0]


@pytest.mark.parametrize("how", ["mode", "rule"], ids=["mode-report-only", "rule-report-only"])
async def test_report_only_logs_would_deny_and_forwards(tmp_path: Path, how: str) -> None:
    policy = copy.deepcopy(POLICY)
    overrides: dict[str, Any] = {}
    if how == "mode":
        overrides["mode"] = "report-only"
    else:
        policy["defaults"]["ip_lockdown"] = False
        policy["rules"].append({"title": "Office only (trial week)", "action": "block", "networks": ["*"],
                                "report_only": True})
        policy["rules"].append({"title": "Office", "action": "allow", "networks": [OFFICE]})
    async with stack(tmp_path, policy=policy, **overrides) as s:
        async with s.client(HOME).get(s.url("/projects"), allow_redirects=False) as resp:
            assert resp.status == 302  # forwarded to the CRM
        assert reached(await s.crm_requests(), "GET", "/projects")
        events = s.logs.events("access.would_deny")
        assert len(events) == 1 and events[0]["client_ip"] == HOME
        assert not s.logs.events("access.denied")


async def test_deny_page_for_browsers_shows_ip_reason_and_request_id_but_not_the_rule_title(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        pat = await logged_in(s, "pat", OFFICE)
        async with pat.get(s.url("/billing"), headers={"Accept": "text/html"}) as resp:
            page = await resp.text()
            assert resp.status == 403 and resp.content_type == "text/html"
            assert OFFICE in page and resp.headers["X-Request-ID"] in page
            assert "function_blocked" in page
            assert "PMs stay out of billing" not in page


async def test_metrics_are_served_only_to_the_allowed_addresses(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        async with s.client(HOME).get(s.url("/dashboard")) as resp:
            assert resp.status == 403
        async with s.client(OFFICE).get(s.url("/_gateway/metrics")) as resp:
            text = await resp.text()
            assert resp.status == 200
        assert 'crmgw_requests_total{decision="deny",reason="ip_not_allowed"}' in text
        assert "crmgw_upstream_response_seconds_bucket" in text
        assert "crmgw_decision_seconds_count" in text
        async with s.client(HOME).get(s.url("/_gateway/metrics")) as resp:
            assert resp.status == 404
