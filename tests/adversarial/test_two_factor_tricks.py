"""2FA step-up tricks: brute force across sessions, open redirects, CSRF, the CRM cookie before the code.

jim knows his password but, for the attacker, not his TOTP secret. Until a valid
code is given, nothing of the CRM session may reach the browser or be usable
through the gateway (DESIGN.md §4): the CRM's record must show no request
carrying a crm_session cookie, under any spelling, and no CRM user.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from yarl import URL

from gateway.totp import SecretStore
from tests.adversarial.support import (
    CRM_COOKIE,
    GATEWAY_COOKIE,
    canonical_cookie,
    cookies_of,
    csrf_of,
    direct_crm_cookie,
    raw_request,
    send_raw,
    set_cookie_names,
    status_of,
)
from tests.e2e.harness import HOME, OFFICE, POLICY, WAREHOUSE, Stack, stack
from tests.support.redis_server import RedisServer, redis_server_fixture

JIM_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
MAX_FAILURES = 3

redis_server = redis_server_fixture(scope="module")


def two_factor(directory: Path) -> dict[str, Any]:
    SecretStore(directory / "totp-secrets.yaml").set("jim", JIM_SECRET)
    policy = copy.deepcopy(POLICY)
    policy["defaults"]["require_2fa"] = True
    return {"policy": policy,
            "totp": {"issuer": "Test CRM", "secrets_file": "totp-secrets.yaml", "max_failures": MAX_FAILURES}}


async def pending_login(s: Stack, source: str = OFFICE) -> aiohttp.ClientSession:
    """jim's password accepted by the CRM, the gateway holding its answer until the code."""
    client = s.client(source)
    async with client.post(s.url("/login"), data={"username": "jim", "password": "demo"},
                           allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"].startswith("/_gateway/2fa")
        assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
    return client


async def form_token(client: aiohttp.ClientSession, s: Stack) -> str:
    async with client.get(s.url("/_gateway/2fa")) as resp:
        assert resp.status == 200
        return csrf_of(await resp.text())


async def no_crm_cookie_reached_the_crm(s: Stack) -> None:
    for entry in await s.crm_requests():
        assert entry["user"] is None, entry
        assert not [n for n in entry["cookies"] if canonical_cookie(n).lower() == CRM_COOKIE], entry


async def test_totp_brute_force_is_locked_per_user_across_sessions_and_addresses(tmp_path: Path) -> None:
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        statuses = []
        for attempt in range(MAX_FAILURES + 2):
            client = await pending_login(s, OFFICE if attempt % 2 else WAREHOUSE)  # a fresh session every time
            async with client.post(s.url("/_gateway/2fa"), json={"code": f"{attempt:06d}"}) as resp:
                statuses.append(resp.status)
                assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
        assert statuses == [401] * (MAX_FAILURES - 1) + [429] * 3
        # Even the right code, in yet another fresh session, is refused while the user is locked.
        client = await pending_login(s)
        async with client.post(s.url("/_gateway/2fa"), json={"code": pyotp.TOTP(JIM_SECRET).now()}) as resp:
            assert resp.status == 429
            assert (await resp.json())["reason"] == "mfa_locked"
            assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
        async with client.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 303
        await no_crm_cookie_reached_the_crm(s)


async def test_codes_sent_all_at_once_are_compared_no_more_than_max_failures_times(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """40 codes at once on 40 connections, the right one last: the lock was checked, the code compared,
    and only then the failure counted, each across Redis round trips, so every code of the burst was
    compared (the right one was accepted at a limit of 3). Now each attempt is counted first."""
    async with stack(tmp_path, **two_factor(tmp_path),
                     session={"store": "redis", "redis_url": redis_server.url}) as s:
        client = await pending_login(s)
        cookie = "; ".join(f"{name}={value}" for name, value in cookies_of(client, s).items())
        valid = {pyotp.TOTP(JIM_SECRET).at(time.time() + step) for step in (-30, 0, 30)}
        codes = [code for code in (f"{i:06d}" for i in range(100)) if code not in valid][:39]
        codes.append(pyotp.TOTP(JIM_SECRET).now())
        connections = [await asyncio.open_connection("127.0.0.1", s.port, local_addr=(OFFICE, 0)) for _ in codes]

        async def attempt(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], code: str) -> int:
            reader, writer = connection
            body = f'{{"code": "{code}"}}'.encode()
            headers = [("Cookie", cookie), ("Content-Type", "application/json")]
            writer.write(raw_request("POST", "/_gateway/2fa", headers, body))
            answer = await reader.read()
            writer.close()
            return status_of(answer)

        statuses = await asyncio.gather(*(attempt(c, code) for c, code in zip(connections, codes, strict=True)))
        compared = len(s.logs.events("totp.failed")) + len(s.logs.events("totp.locked")) + statuses.count(200)
        assert compared <= MAX_FAILURES, (compared, statuses)
        assert statuses[-1] == 429  # the right code came too late: the user is locked, the CRM session held
        await no_crm_cookie_reached_the_crm(s)


async def test_a_code_cannot_be_replayed_in_another_session(tmp_path: Path) -> None:
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        code = pyotp.TOTP(JIM_SECRET).now()
        first = await pending_login(s)
        async with first.post(s.url("/_gateway/2fa"), json={"code": code}) as resp:
            assert resp.status == 200
        await s.reset_crm()
        second = await pending_login(s)
        async with second.post(s.url("/_gateway/2fa"), json={"code": code}) as resp:
            assert resp.status == 401
            assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
        async with second.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 303
        await no_crm_cookie_reached_the_crm(s)


async def test_a_pending_login_carried_off_site_gets_no_crm_session_for_its_code(tmp_path: Path) -> None:
    """The 2FA endpoint ran before the policy: jim's pending cookie carried home (locked down) and a
    valid code had the CRM's session released there (review 7). The code completes a login, and is
    judged as that login would be, from where it is given; the code is not spent."""
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        office = await pending_login(s)
        home = s.client(HOME)
        home.cookie_jar.update_cookies({c.key: c.value for c in office.cookie_jar}, URL(s.url("/")))
        code = pyotp.TOTP(JIM_SECRET).now()
        async with home.post(s.url("/_gateway/2fa"), json={"code": code}) as resp:
            assert resp.status == 403 and (await resp.json())["reason"] == "ip_not_allowed"
            assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
        assert s.logs.events("access.denied")[-1]["user"] == "jim"
        async with office.post(s.url("/_gateway/2fa"), json={"code": code}) as resp:
            assert resp.status == 200  # from the office the same code still counts
            assert CRM_COOKIE in set_cookie_names(resp.headers.getall("Set-Cookie", ()))


OFF_SITE = [
    "//evil.example/x",
    "https://evil.example/",
    "http://evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "\\\\evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http:evil.example",
    "https:/\\evil.example",
    " //evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "https://crm.example@evil.example/",
    "//evil.example%2F..",
    "///evil.example",
]


@pytest.mark.parametrize("target", OFF_SITE, ids=[repr(t) for t in OFF_SITE])
async def test_next_never_redirects_off_site(tmp_path: Path, target: str) -> None:
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        client = await pending_login(s)
        url = URL(s.url("/_gateway/2fa")).with_query(next=target)
        async with client.get(url) as resp:
            page = await resp.text()
            assert resp.status == 200
            assert "evil" not in page.split('action="', 1)[1].split('"', 1)[0]
        async with client.post(url, data={"code": pyotp.TOTP(JIM_SECRET).now(), "csrf_token": csrf_of(page)},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            location = resp.headers["Location"]
        parsed = URL(location)
        assert not parsed.is_absolute() and location.startswith("/"), location
        assert not location.startswith(("//", "/\\")) and "evil" not in location, location


async def test_2fa_form_posts_need_this_sessions_csrf_token(tmp_path: Path) -> None:
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        victim = await pending_login(s)
        other = await pending_login(s)
        foreign_token = await form_token(other, s)
        code = pyotp.TOTP(JIM_SECRET).now()
        for fields in ({"code": code}, {"code": code, "csrf_token": ""}, {"code": code, "csrf_token": foreign_token},
                       {"code": code, "csrf_token": foreign_token.upper()}):
            async with victim.post(s.url("/_gateway/2fa"), data=fields, allow_redirects=False) as resp:
                assert resp.status == 403, fields
                assert CRM_COOKIE not in set_cookie_names(resp.headers.getall("Set-Cookie", ()))
        # A form disguised as text/plain does not skip the token either.
        async with victim.post(s.url("/_gateway/2fa"), data=f'{{"code": "{code}"}}',
                               headers={"Content-Type": "text/plain"}, allow_redirects=False) as resp:
            assert resp.status in (400, 403)
        await no_crm_cookie_reached_the_crm(s)
        # Control: the refused posts burned neither the code nor a failure; the right token passes.
        async with victim.post(s.url("/_gateway/2fa"), data={"code": code, "csrf_token": await form_token(victim, s)},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            assert CRM_COOKIE in set_cookie_names(resp.headers.getall("Set-Cookie", ()))


SMUGGLED_BEFORE_2FA = [
    ("plainly", ["{gw}; crm_session={crm}"]),
    ("on a second Cookie line", ["{gw}", "crm_session={crm}"]),
    ("twice", ["{gw}; crm_session={crm}; crm_session={crm}"]),
    ("percent-encoded name", ["{gw}; crm%5Fsession={crm}"]),
    ("quoted", ['{gw}; crm_session="{crm}"']),
]


@pytest.mark.parametrize("lines", [lines for _, lines in SMUGGLED_BEFORE_2FA], ids=[d for d, _ in SMUGGLED_BEFORE_2FA])
async def test_the_crm_cookie_is_stripped_until_the_code_is_given(tmp_path: Path, lines: list[str]) -> None:
    """A CRM session obtained elsewhere, sent with the pending gateway session, to pages the gateway forwards."""
    async with stack(tmp_path, **two_factor(tmp_path)) as s:
        gateway_cookie = cookies_of(await pending_login(s), s)[GATEWAY_COOKIE]
        crm = await direct_crm_cookie(s, "jim")
        await s.reset_crm()
        # One pass: a value put in is never searched for the next placeholder (a random
        # session token can hold "CRM").
        headers = [("Cookie", line.format(gw=f"{GATEWAY_COOKIE}={gateway_cookie}", crm=crm)) for line in lines]
        for target in ("/login", "/static/app.css", "/dashboard", "/api/mobile/me", "/echo"):
            response = await send_raw(s.port, raw_request("GET", target, headers))
            assert status_of(response) in (200, 303, 401, 404), target
        assert {entry["path"] for entry in await s.crm_requests()} == {"/login", "/static/app.css"}
        await no_crm_cookie_reached_the_crm(s)
