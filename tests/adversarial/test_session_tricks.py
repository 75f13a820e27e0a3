"""Gateway-cookie and CRM-cookie tricks: forged, stale or smuggled sessions (issue 5 item 3).

The gateway's session cookie says who the user is; the CRM's cookie is honoured
only when it is the one bound to that session (DESIGN.md §4). The CRM's record is
the ground truth: for every request it received it notes the CRM user its own
cookie resolved to and the names of the cookies that came with it, in every
Cookie line. "No user" on a recorded request means the CRM treated it as
anonymous; a crm_session name on it means the cookie got through.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from gateway.sessions import fingerprint
from tests.adversarial.support import (
    CRM_COOKIE,
    GATEWAY_COOKIE,
    browser_login,
    canonical_cookie,
    cookies_of,
    direct_crm_cookie,
    raw_request,
    send_raw,
    status_of,
)
from tests.e2e.harness import HOME, OFFICE, Stack, stack
from tests.support.redis_server import redis_server_fixture

redis_server = redis_server_fixture(scope="module")


def forged_session(key: bytes, **session: Any) -> str:
    """A gateway cookie as aiohttp-session's EncryptedCookieStorage writes it, under ``key``."""
    now = time.time()
    data = {"sid": "f" * 32, "login_at": now, "seen": now, "mfa": True, **session}
    payload = json.dumps({"created": int(now), "session": data}).encode()
    return Fernet(base64.urlsafe_b64encode(key)).encrypt(payload).decode()


def deployment_key(s: Stack) -> bytes:
    return base64.urlsafe_b64decode((s.directory / "secret.key").read_text().strip())


async def dashboard_as_seen_by_the_crm(s: Stack, cookie: str, *, source: str = OFFICE) -> tuple[int, list[Any]]:
    """GET /dashboard with exactly this Cookie header; the status and the CRM's record of it."""
    await s.reset_crm()
    response = await send_raw(s.port, raw_request("GET", "/dashboard", [("Cookie", cookie)]), source=source)
    return status_of(response), [r for r in await s.crm_requests() if r["path"] == "/dashboard"]


def flip(value: str, index: int) -> str:
    char = value[index]
    return value[:index] + ("A" if char != "A" else "B") + value[index + 1 :]


TAMPERS = [
    ("a byte flipped in the middle", lambda v: flip(v, len(v) // 2)),
    ("a byte flipped near the end (the MAC)", lambda v: flip(v, len(v) - 10)),
    ("a byte flipped at the start (the version)", lambda v: flip(v, 0)),
    ("truncated by half", lambda v: v[: len(v) // 2]),
    ("truncated by one character", lambda v: v[:-1]),
    ("empty", lambda v: ""),
]


@pytest.mark.parametrize("tamper", [t for _, t in TAMPERS], ids=[d for d, _ in TAMPERS])
async def test_a_tampered_gateway_cookie_identifies_nobody(tmp_path: Path, tamper: Any) -> None:
    async with stack(tmp_path) as s:
        cookies = cookies_of(await browser_login(s, "jim"), s)
        cookie = f"{GATEWAY_COOKIE}={tamper(cookies[GATEWAY_COOKIE])}; {CRM_COOKIE}={cookies[CRM_COOKIE]}"
        status, seen = await dashboard_as_seen_by_the_crm(s, cookie)
        assert status in (302, 303)  # the CRM saw no session: back to its login
        [entry] = seen
        assert entry["user"] is None
        assert CRM_COOKIE not in entry["cookies"]


async def test_a_cookie_made_with_another_deployments_key_is_refused(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        crm = cookies_of(await browser_login(s, "jim"), s)[CRM_COOKIE]
        claims = {"user": "jim", "crm": fingerprint(crm)}
        # Control: the forging method is right, since this deployment's own key is accepted.
        genuine = forged_session(deployment_key(s), **claims)
        status, [entry] = await dashboard_as_seen_by_the_crm(s, f"{GATEWAY_COOKIE}={genuine}; {CRM_COOKIE}={crm}")
        assert status == 200 and entry["user"] == "jim"
        other = forged_session(base64.urlsafe_b64decode(Fernet.generate_key()), **claims)
        status, [entry] = await dashboard_as_seen_by_the_crm(s, f"{GATEWAY_COOKIE}={other}; {CRM_COOKIE}={crm}")
        assert status in (302, 303)
        assert entry["user"] is None and CRM_COOKIE not in entry["cookies"]


async def test_a_cookie_replayed_after_logout_is_dead(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = await browser_login(s, "jim")
        cookies = cookies_of(client, s)
        async with client.get(s.url("/logout"), allow_redirects=False) as resp:
            assert resp.status in (302, 303)
        replay = f"{GATEWAY_COOKIE}={cookies[GATEWAY_COOKIE]}; {CRM_COOKIE}={cookies[CRM_COOKIE]}"
        status, [entry] = await dashboard_as_seen_by_the_crm(s, replay)
        assert status in (302, 303)
        assert entry["user"] is None and CRM_COOKIE not in entry["cookies"]


async def test_a_cookie_replayed_after_idle_expiry_is_dead(tmp_path: Path) -> None:
    async with stack(tmp_path, session={"idle_timeout": "1s"}) as s:
        cookies = cookies_of(await browser_login(s, "jim"), s)
        replay = f"{GATEWAY_COOKIE}={cookies[GATEWAY_COOKIE]}; {CRM_COOKIE}={cookies[CRM_COOKIE]}"
        status, [entry] = await dashboard_as_seen_by_the_crm(s, replay)
        assert status == 200 and entry["user"] == "jim"  # control: alive before the idle time
        await asyncio.sleep(1.3)
        status, [entry] = await dashboard_as_seen_by_the_crm(s, replay)
        assert status in (302, 303)
        assert entry["user"] is None and CRM_COOKIE not in entry["cookies"]


async def test_a_cookie_carried_to_a_blocked_address_reaches_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cookies = cookies_of(await browser_login(s, "jim"), s)
        stolen = f"{GATEWAY_COOKIE}={cookies[GATEWAY_COOKIE]}; {CRM_COOKIE}={cookies[CRM_COOKIE]}"
        status, seen = await dashboard_as_seen_by_the_crm(s, stolen, source=HOME)
        assert status == 403
        assert seen == []


async def test_a_cookie_stays_bound_to_its_gateway_session_not_to_another_users(tmp_path: Path) -> None:
    """pat's gateway session with jim's CRM cookie: the CRM must not act as jim for pat."""
    async with stack(tmp_path) as s:
        pat = cookies_of(await browser_login(s, "pat"), s)
        jim = cookies_of(await browser_login(s, "jim"), s)
        status, [entry] = await dashboard_as_seen_by_the_crm(
            s, f"{GATEWAY_COOKIE}={pat[GATEWAY_COOKIE]}; {CRM_COOKIE}={jim[CRM_COOKIE]}")
        assert status in (302, 303)
        assert entry["user"] is None and CRM_COOKIE not in entry["cookies"]


SMUGGLED = [
    ("the foreign cookie after the bound one", ["{gw}; crm_session={pat}; crm_session={jim}"]),
    ("the foreign cookie before the bound one", ["{gw}; crm_session={jim}; crm_session={pat}"]),
    ("the foreign cookie on a second Cookie line", ["{gw}; crm_session={pat}", "crm_session={jim}"]),
    ("only the foreign cookie, on a second Cookie line", ["{gw}", "crm_session={jim}"]),
    ("the foreign cookie first, on the first of two lines", ["crm_session={jim}", "{gw}; crm_session={pat}"]),
    ("percent-encoded name (PHP decodes cookie names)", ["{gw}; crm_session={pat}; crm%5Fsession={jim}"]),
    ("a dot for the underscore (PHP reads it as '_')", ["{gw}; crm.session={jim}"]),
    ("a space for the underscore (PHP reads it as '_')", ["{gw}; crm session={jim}"]),
    ("an array-style name (PHP reads crm_session[])", ["{gw}; crm_session[]={jim}"]),
    ("upper-case name (case-insensitive cookie back ends)", ["{gw}; CRM_SESSION={jim}"]),
    ("spaces around the name", ["{gw};  crm_session ={jim}"]),
    ("quoted value", ['{gw}; crm_session="{jim}"']),
    ("a bare name without '='", ["{gw}; crm_session"]),
]


@pytest.mark.parametrize("lines", [lines for _, lines in SMUGGLED], ids=[d for d, _ in SMUGGLED])
async def test_a_second_crm_cookie_cannot_ride_along_with_the_bound_one(tmp_path: Path, lines: list[str]) -> None:
    """Only the bound CRM cookie, alone, passes; any other copy or spelling means none passes."""
    async with stack(tmp_path) as s:
        pat = cookies_of(await browser_login(s, "pat"), s)
        jim_crm = await direct_crm_cookie(s, "jim")
        await s.reset_crm()
        headers = [
            # One pass: a value put in is never searched for the next placeholder (a random
            # session token can hold "JIM").
            ("Cookie", line.format(gw=f"{GATEWAY_COOKIE}={pat[GATEWAY_COOKIE]}", pat=pat[CRM_COOKIE], jim=jim_crm))
            for line in lines
        ]
        response = await send_raw(s.port, raw_request("GET", "/dashboard", headers))
        assert status_of(response) in (200, 302, 303)
        for entry in await s.crm_requests():
            assert entry["user"] in (None, "pat")
            crm_names = [name for name in entry["cookies"] if canonical_cookie(name).lower() == CRM_COOKIE]
            assert crm_names in ([], [CRM_COOKIE]), crm_names
            if crm_names:
                assert entry["user"] == "pat"  # the one that passed is pat's own


@pytest.mark.parametrize(
    "line",
    ["theme=dark, {crm}", "theme=dark,{crm}", "theme=dark {crm}", "theme=dark\t{crm}", "theme {crm}"],
    ids=["comma", "comma-alone", "space", "tab", "space-after-a-bare-name"],
)
async def test_a_crm_cookie_hidden_after_a_comma_or_a_space_is_refused(tmp_path: Path, line: str) -> None:
    """One cookie to the gateway's ';' split, two to RFC 2109 parsers, to aiohttp's (the demo CRM's)
    and to Python's SimpleCookie: the hidden copy would reach the CRM unjudged (pat's own CRM
    session let him read billing; jim's, riding on pat's gateway session, made the CRM act as jim)."""
    async with stack(tmp_path) as s:
        pat = cookies_of(await browser_login(s, "pat"), s)
        jim_crm = await direct_crm_cookie(s, "jim")
        await s.reset_crm()
        for cookie in (
            f"{GATEWAY_COOKIE}={pat[GATEWAY_COOKIE]}; " + line.format(crm=f"{CRM_COOKIE}={jim_crm}"),
            line.format(crm=f"{CRM_COOKIE}={pat[CRM_COOKIE]}"),  # no gateway session at all
        ):
            for path in ("/dashboard", "/billing"):
                response = await send_raw(s.port, raw_request("GET", path, [("Cookie", cookie)]))
                assert status_of(response) == 400, (cookie, path)
        assert await s.crm_requests() == []


def _as_sent(text: str) -> str:
    """``text`` as a browser's UTF-8 bytes, in the Latin-1 the raw-socket helper writes."""
    return text.encode().decode("latin-1")


@pytest.mark.parametrize("line", ["pref=1 {gw}", "pref=1,{gw}", "pref=1\t{gw}",
                                  _as_sent("\u00a0{gw}"), _as_sent("\u3000{gw}")],
                         ids=["space", "comma", "tab", "no-break space", "ideographic space"])
async def test_a_gateway_cookie_hidden_in_another_cookie_is_not_the_gateways(tmp_path: Path, line: str) -> None:
    """Review 8: `pref=1 crmgw_session=<bob's>` (one cookie to the browser, which a CRM page can set) was
    read by aiohttp's parser as a second gateway cookie, after jim's own: jim's browser ran as bob.
    Review 9: so was `\u00a0crmgw_session` (a script's cookie of its own: Python's strip() trims U+00A0,
    browsers do not). Now read as browsers name cookies: jim stays jim, and is not locked out either."""
    async with stack(tmp_path) as s:
        jim = cookies_of(await browser_login(s, "jim"), s)
        bob = cookies_of(await browser_login(s, "bob"), s)
        cookie = f"{GATEWAY_COOKIE}={jim[GATEWAY_COOKIE]}; " + line.format(gw=f"{GATEWAY_COOKIE}={bob[GATEWAY_COOKIE]}")
        response = await send_raw(s.port, raw_request("GET", "/_gateway/whoami", [("Cookie", cookie)]))
        assert status_of(response) == 200
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["user"] == "jim"


async def test_a_gateway_cookie_in_a_second_cookie_line_is_read(tmp_path: Path) -> None:
    """Only the first Cookie line was read for the gateway's cookie (all of them for the CRM's): a user
    whose browser split the line was anonymous, and their bound CRM cookie stripped."""
    async with stack(tmp_path) as s:
        jim = cookies_of(await browser_login(s, "jim"), s)
        lines = [("Cookie", "theme=dark"), ("Cookie", f"{GATEWAY_COOKIE}={jim[GATEWAY_COOKIE]}"),
                 ("Cookie", f"{CRM_COOKIE}={jim[CRM_COOKIE]}")]
        response = await send_raw(s.port, raw_request("GET", "/_gateway/whoami", lines))
        assert status_of(response) == 200
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["user"] == "jim"


@pytest.mark.parametrize("target", [
    "/billing;crm_session={t}", "/billing;v=2;CRM_SESSION={t}/q3", "/billing?crm_session={t}",
    "/billing?page=2&crm%5Fsession={t}&sort=date", "/billing;crm.session={t}",
], ids=["path-parameter", "path-parameter-in-capitals", "query", "query-encoded-among-others", "php-spelling"])
async def test_a_crm_session_in_the_url_is_stripped_like_the_cookie(tmp_path: Path, target: str) -> None:
    """Servlet containers read ;jsessionid= from the path, PHP its session id from the query: pat's own
    CRM session there reached the CRM unbound, with the request judged as anonymous (no user rules)."""
    async with stack(tmp_path) as s:
        token = cookies_of(await browser_login(s, "pat"), s)[CRM_COOKIE]
        await s.reset_crm()
        response = await send_raw(s.port, raw_request("GET", target.format(t=token), []))
        assert status_of(response) < 500
        [entry] = await s.crm_requests()
        assert token not in entry["path"] + "?" + entry["query"], entry
        assert entry["path"].startswith("/billing") and entry["user"] is None
        assert s.logs.events("session.crm_url_session_stripped")
        assert token not in s.logs.getvalue()


@pytest.mark.parametrize("target", ["/billing?next=crm_session={t}", "/billing?q=x/crm_session={t}/",
                                    "/billing/crm_session={t}/x", "/billing?next=crm%5Fsession%3D{t}"])
async def test_a_crm_session_elsewhere_in_the_url_is_refused(tmp_path: Path, target: str) -> None:
    """PHP with use_trans_sid takes the session id from anywhere in the URI (a substring search):
    a copy inside another value cannot be removed alone."""
    async with stack(tmp_path) as s:
        token = cookies_of(await browser_login(s, "pat"), s)[CRM_COOKIE]
        await s.reset_crm()
        response = await send_raw(s.port, raw_request("GET", target.format(t=token), []))
        assert status_of(response) == 400
        assert await s.crm_requests() == []


async def test_control_the_bound_cookie_alone_passes(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = await browser_login(s, "pat")
        await s.reset_crm()
        async with client.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 200
        [entry] = await s.crm_requests()
        assert entry["user"] == "pat" and entry["cookies"].count(CRM_COOKIE) == 1


@pytest.mark.parametrize("value", ["\xff", "caf\xe9", "\u00e9" * 40], ids=["a raw byte", "latin-1", "long"])
@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_a_gateway_cookie_that_is_not_ascii_gets_a_400_not_a_500(
    tmp_path: Path, store: str, value: str, request: pytest.FixtureRequest
) -> None:
    """Header bytes reach the session storage as surrogates: the Redis client and Fernet raised on them,
    a 500 and a traceback per request. The gateway writes only ASCII there (hex or base64)."""
    session: dict[str, Any] = {"cookie_secure": False}
    if store == "redis":
        session |= {"store": "redis", "redis_url": request.getfixturevalue("redis_server").url}
    async with stack(tmp_path, session=session) as s:
        response = await send_raw(s.port, raw_request("GET", "/dashboard", [("Cookie", f"{GATEWAY_COOKIE}={value}")]))
        assert status_of(response) == 400
        assert not s.logs.events("request.failed")
