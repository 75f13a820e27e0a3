"""What the CRM answers, attacked: when a login counts as a success, which CRM session is bound,
and whether a CRM response can touch the gateway's own session cookie (review 7)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pyotp
import pytest
from yarl import URL

from gateway.cookies import cookie_date, set_cookie
from tests.adversarial.scripted_crm import Rig, Script, rig
from tests.e2e.harness import HOME, OFFICE
from tests.e2e.test_identity import JIM_SECRET, policy_with, with_2fa


def jar(client: aiohttp.ClientSession, r: Rig) -> dict[str, str]:
    return {k: m.value for k, m in client.cookie_jar.filter_cookies(URL(r.url("/"))).items()}


async def login(client: aiohttp.ClientSession, r: Rig, user: str = "jim",
                password: str = "demo") -> aiohttp.ClientResponse:
    async with client.post(r.url("/login"), data={"username": user, "password": password},
                           allow_redirects=False) as resp:
        await resp.read()
        return resp


async def whoami(client: aiohttp.ClientSession, r: Rig) -> str | None:
    async with client.get(r.url("/_gateway/whoami")) as resp:
        user: str | None = (await resp.json())["user"]
        return user


# A legacy CRM answering a wrong password: back to the form, its cookie cleared (PHP's setcookie(name, "")).
FAILED_LOGIN_CLEARS_COOKIE = [("Location", "/login?error=1"), ("Set-Cookie", "crm_session=; Max-Age=0; Path=/")]


async def test_a_failed_login_whose_redirect_deletes_the_crm_cookie_is_not_a_success(tmp_path: Path) -> None:
    """The success test (302/303 and a Set-Cookie named crm_session) took the deletion for a new
    session: a wrong password for alice (exempt from the lock-down) from home gave a gateway session
    as alice, which opened the CRM's pages from outside."""
    script = Script(login_fail_status=302, login_fail_headers=FAILED_LOGIN_CLEARS_COOKIE)
    async with rig(tmp_path, script=script) as r:
        attacker = r.client(HOME)
        assert (await login(attacker, r, "alice", "wrong-password")).status == 302
        async with attacker.get(r.url("/page")) as page:
            assert page.status == 403
        assert await whoami(attacker, r) is None
        assert r.logs.events("login.failed")[-1]["user"] == "alice"


async def guesses(r: Rig, source: str, user: str, times: int) -> list[int]:
    """The statuses of ``times`` wrong passwords for ``user``, each from a new client that gets no session."""
    statuses = []
    for i in range(times):
        client = r.client(source)
        statuses.append((await login(client, r, user, f"guess{i}")).status)
        assert await whoami(client, r) is None
        await client.close()
    return statuses


async def test_failed_logins_whose_redirect_deletes_the_crm_cookie_are_counted_and_banned(tmp_path: Path) -> None:
    """Each such 'success' had cleared the username's failures: guessing was never banned."""
    script = Script(login_fail_status=302, login_fail_headers=FAILED_LOGIN_CLEARS_COOKIE)
    async with rig(tmp_path, script=script) as r:
        assert await guesses(r, OFFICE, "jim", 8) == [302] * 5 + [429] * 3


async def test_the_bound_crm_session_is_the_one_the_browser_keeps(tmp_path: Path) -> None:
    """A CRM that clears the old cookie and sets the new one in one answer (two Set-Cookie lines; the
    browser keeps the last) had the deletion bound, and the user's real CRM session stripped."""
    script = Script(login_ok_cookies=["crm_session=; Max-Age=0; Path=/", "crm_session={token}; Path=/; HttpOnly"])
    async with rig(tmp_path, script=script) as r:
        jim = r.client(OFFICE)
        assert (await login(jim, r)).status == 302
        assert jar(jim, r)["crm_session"].startswith("tok")
        async with jim.get(r.url("/page")) as resp:
            assert await resp.text() == "page for jim"
        assert not r.logs.events("session.crm_cookie_stripped")


@pytest.mark.parametrize(("lines", "kept"), [
    (["crm_session=abc; Path=/"], "abc"),
    (["crm_session=; Path=/"], None),
    (['crm_session=""; Path=/'], None),
    (["crm_session=abc; Max-Age=0"], None),
    (["crm_session=abc; Max-Age=-1"], None),
    (["crm_session=abc; Max-Age=60"], "abc"),
    (["crm_session=abc; Max-Age=x"], "abc"),  # not a number: ignored (RFC 6265 §5.2.2)
    (["crm_session=abc; expires=Thu, 01 Jan 1970 00:00:00 GMT"], None),
    (["crm_session=abc; Expires=Fri, 01 Jan 2100 00:00:00 GMT"], "abc"),
    (["crm_session=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60"], "abc"),  # Max-Age wins
    (["crm_session=abc; Expires=not a date"], "abc"),
    (["crm_session=old", "crm_session=; Max-Age=0"], None),
    (["crm_session=; Max-Age=0", "crm_session=new"], "new"),
    # Review 8: each Path and Domain is a cookie of its own to a browser.
    (["crm_session=new; Path=/", "crm_session=; Path=/legacy; Max-Age=0"], "new"),
    (["crm_session=new; Path=/", "crm_session=deleted; Domain=crm.example.com; Path=/; "
      "expires=Thu, 01-Jan-1970 00:00:01 GMT"], "new"),
    (["crm_session=a; Path=/x", "crm_session=b; Path=/"], "b"),
    (["crm_session=a; Path=/x", "crm_session=b; Path=/", "crm_session=; Path=/; Max-Age=0"], "a"),
    # ... and Expires is read as browsers read it (RFC 6265 §5.1.1), not as an HTTP-date.
    (["crm_session=abc; Expires=Thu, 01 Jan 1970 00:00:00.000 GMT"], None),
    (["crm_session=abc; Expires=1970 Jan 01 00:00:00 GMT"], None),
    (["crm_session=abc; Expires=Wed, 31-Dec-69 23:59:59 GMT"], "abc"),  # 2069
    (["crm_session=abc; Max-Age=+0"], None),
    # Review 9: a Path missing, empty or not starting with '/' is the default path, '/' for /login.
    (["crm_session=fresh; path=/", "crm_session=; expires=Thu, 01 Jan 1970 00:00:00 GMT"], None),
    (["crm_session=fresh; path=/", "crm_session=; Max-Age=0; Path="], None),
    (["crm_session=fresh; path=/", "crm_session=; Max-Age=0; Path=login"], None),
    (["other=1", "crm_sessionx=2"], None),
])
def test_set_cookie_is_what_the_browser_keeps(lines: list[str], kept: str | None) -> None:
    assert set_cookie(lines, "crm_session") == kept


@pytest.mark.parametrize("line", [
    "crmgw_session=; Max-Age=0; Path=/",
    'crmgw_session=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/',
    "crmgw_session=junk; Path=/",
    " crmgw_session =junk",
])
@pytest.mark.parametrize("big", [False, True], ids=["small body", "streamed body"])
async def test_a_crm_response_cannot_delete_or_overwrite_the_gateway_session_cookie(
    tmp_path: Path, line: str, big: bool
) -> None:
    async with rig(tmp_path) as r:
        jim = r.client(OFFICE)
        assert (await login(jim, r)).status == 302
        r.script.page_headers = [("Set-Cookie", line), ("Set-Cookie", "theme=dark; Path=/")]
        r.script.page_size = 200_000 if big else 0
        async with jim.get(r.url("/page")) as resp:
            await resp.read()
            set_cookies = resp.headers.getall("Set-Cookie", ())
        assert set_cookies == ["theme=dark; Path=/"]
        assert await whoami(jim, r) == "jim"
        assert r.logs.events("upstream.own_cookie_dropped")


async def test_a_crm_response_cannot_plant_another_users_gateway_session(tmp_path: Path) -> None:
    """A CRM page that reflects a cookie (or a compromised CRM) handed jim's browser bob's gateway session."""
    async with rig(tmp_path) as r:
        bob = r.client(OFFICE)
        assert (await login(bob, r, "bob")).status == 302
        bobs = jar(bob, r)["crmgw_session"]
        jim = r.client(OFFICE)
        assert (await login(jim, r, "jim")).status == 302
        r.script.page_headers = [("Set-Cookie", f"crmgw_session={bobs}; Path=/; HttpOnly")]
        async with jim.get(r.url("/page")) as resp:
            await resp.read()
        assert await whoami(jim, r) == "jim"


async def test_a_held_login_answer_keeps_no_set_cookie_for_the_gateway_session(tmp_path: Path) -> None:
    """The CRM's login answer waits in the session for the second factor; its Set-Cookie for the
    gateway's own cookie is not kept to be released with it."""
    policy = policy_with(require_2fa=True)
    script = Script(login_ok_cookies=["crm_session={token}; Path=/", "crmgw_session=planted; Path=/"])
    async with rig(tmp_path, policy=policy, script=script, **with_2fa(tmp_path)) as r:
        jim = r.client(OFFICE)
        assert (await login(jim, r)).status == 303
        async with jim.post(r.url("/_gateway/2fa"), json={"code": pyotp.TOTP(JIM_SECRET).now()}) as resp:
            assert resp.status == 200
            released = resp.headers.getall("Set-Cookie", ())
        assert any(line.startswith("crm_session=tok") for line in released)
        assert not [line for line in released if line.startswith("crmgw_session=planted")]
        assert await whoami(jim, r) == "jim"


@pytest.mark.parametrize(("text", "year"), [
    ("Thu, 01 Jan 1970 00:00:00 GMT", 1970), ("Sunday, 06-Nov-94 08:49:37 GMT", 1994),
    ("Sun Nov  6 08:49:37 1994", 1994), ("Wed, 31-Dec-69 23:59:59 GMT", 2069), ("01 Jan 2100 00:00:00", 2100),
    ("Sun, 30 Feb 2020 00:00:00 GMT", None), ("Thu, 01 Jan 1970 24:00:00 GMT", None), ("tomorrow", None),
    ("Thu, 01 Jan 1600 00:00:00 GMT", 1600),  # Chromium keeps years before 1601 (RFC 6265 does not)
])
def test_cookie_dates_are_read_as_browsers_read_them(text: str, year: int | None) -> None:
    date = cookie_date(text)
    assert (date.year if date else None) == year


async def test_a_real_login_that_also_clears_an_old_scoped_copy_is_a_success(tmp_path: Path) -> None:
    """Review 8: the last Set-Cookie line cleared a copy of another Path: the login was counted as a failure
    (five of them banned a user with the right password) and the real CRM session stripped."""
    script = Script(login_ok_cookies=["crm_session={token}; Path=/", "crm_session=; Path=/legacy; Max-Age=0"])
    async with rig(tmp_path, script=script) as r:
        for _ in range(6):
            jim = r.client(OFFICE)
            assert (await login(jim, r)).status == 302
            assert await whoami(jim, r) == "jim"
            async with jim.get(r.url("/page")) as resp:
                assert await resp.text() == "page for jim"
            await jim.close()
        assert not r.logs.events("login.failed")


@pytest.mark.parametrize("fail_headers", [
    [("Location", "/login?error"), ("Set-Cookie", "crm_session=fresh-anonymous; Path=/; HttpOnly")],
    [("Location", "http://crm.example/login/?error=1"), ("Set-Cookie", "crm_session=fresh-anonymous")],
    [("Location", "/login"), ("Set-Cookie", "crm_session=fresh; path=/"),
     ("Set-Cookie", "crm_session=; expires=Thu, 01 Jan 1970 00:00:00 GMT")],
], ids=["Spring Security's failure handler", "an absolute URL", "a deletion without a Path"])
async def test_a_redirect_back_to_the_login_form_is_a_failure(
    tmp_path: Path, fail_headers: list[tuple[str, str]]
) -> None:
    """Review 9: Spring Security's failure handler (and a PHP script's session_start()) opens a fresh
    anonymous session on its redirect back to the form: a live CRM cookie on a 302, taken for a success.
    A wrong password for alice from home gave a gateway session as alice, and guessing was never banned."""
    script = Script(login_fail_status=302, login_fail_headers=fail_headers)
    async with rig(tmp_path, script=script) as r:
        assert await guesses(r, HOME, "alice", 7) == [302] * 5 + [429] * 2
