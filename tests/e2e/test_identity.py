"""Identity from the CRM's login, gateway sessions and the TOTP step-up, end to end (issue 4)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
from yarl import URL

from gateway.totp import SecretStore
from tests.e2e.harness import HOME, OFFICE, POLICY, Stack, free_port, stack

JIM_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
MOBILE_UA = "AcmeCRM-Mobile/5.2 (Android 14)"


def policy_with(**defaults: Any) -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["defaults"].update(defaults)
    return policy


def with_2fa(directory: Path, *, enroll: tuple[str, ...] = ("jim",)) -> dict[str, Any]:
    store = SecretStore(directory / "totp-secrets.yaml")
    for user in enroll:
        store.set(user, JIM_SECRET)
    return {"totp": {"issuer": "Test CRM", "secrets_file": "totp-secrets.yaml", "max_failures": 3}}


async def login(client: aiohttp.ClientSession, s: Stack, user: str = "jim", password: str = "demo",
                **kwargs: Any) -> aiohttp.ClientResponse:
    async with client.post(s.url("/login"), data={"username": user, "password": password},
                           allow_redirects=False, **kwargs) as resp:
        await resp.read()
        return resp


async def submit_code(client: aiohttp.ClientSession, s: Stack) -> None:
    """jim's current code through the 2FA form."""
    async with client.get(s.url("/_gateway/2fa")) as resp:
        csrf = (await resp.text()).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    async with client.post(s.url("/_gateway/2fa"), data={"code": pyotp.TOTP(JIM_SECRET).now(), "csrf_token": csrf},
                           allow_redirects=False) as resp:
        assert resp.status == 303


def set_cookie_names(resp: aiohttp.ClientResponse) -> set[str]:
    return {header.split("=", 1)[0].strip() for header in resp.headers.getall("Set-Cookie", ())}


def cookie_header(client: aiohttp.ClientSession, s: Stack) -> str:
    cookies = client.cookie_jar.filter_cookies(URL(s.url("/")))
    return "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())


async def test_login_from_the_office_starts_a_gateway_session(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = s.client(OFFICE)
        resp = await login(client, s)
        assert resp.status == 302
        assert {"crm_session", "crmgw_session"} <= set_cookie_names(resp)
        async with client.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 200
            assert "jim" in await resp.text()
        async with client.get(s.url("/_gateway/whoami")) as resp:
            assert (await resp.json())["user"] == "jim"
        assert s.logs.events("login.succeeded")[-1]["user"] == "jim"


async def test_failed_login_creates_no_session(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = s.client(OFFICE)
        resp = await login(client, s, password="wrong")
        assert resp.status == 200
        assert "crmgw_session" not in set_cookie_names(resp)
        async with client.get(s.url("/_gateway/whoami")) as resp:
            assert (await resp.json())["user"] is None


async def test_the_right_password_from_outside_never_reaches_the_crm(tmp_path: Path) -> None:
    async with stack(tmp_path, crm_users={"bob": "Very-Secret-9"}) as s:
        resp = await login(s.client(HOME), s, user="bob", password="Very-Secret-9")
        assert resp.status == 403
        assert not [entry for entry in await s.crm_logins() if entry["username"] == "bob"]
        denied = s.logs.events("access.denied")[-1]
        assert denied["user"] == "bob" and denied["reason"] == "ip_not_allowed"
        assert "Very-Secret-9" not in s.logs.getvalue()


async def test_submitted_username_case_and_spaces_do_not_dodge_user_rules(tmp_path: Path) -> None:
    policy = copy.deepcopy(POLICY)
    policy["rules"].append({"title": "bob is suspended", "action": "block", "users": ["bob"]})
    async with stack(tmp_path, policy=policy) as s:
        for spelling in ("bob", "BOB", " Bob "):
            resp = await login(s.client(OFFICE), s, user=spelling)
            assert resp.status == 403, spelling
        assert not await s.crm_logins()


async def test_a_stolen_gateway_cookie_is_denied_outside_the_office(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        await login(office, s)
        stolen = cookie_header(office, s)
        home = s.client(HOME, cookie_jar=aiohttp.DummyCookieJar())
        async with home.get(s.url("/dashboard"), headers={"Cookie": stolen}, allow_redirects=False) as resp:
            assert resp.status == 403
        denied = s.logs.events("access.denied")[-1]
        assert denied["user"] == "jim" and denied["client_ip"] == HOME


async def test_a_crm_cookie_not_bound_to_the_gateway_session_is_stripped(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        # A CRM session obtained around the gateway (straight from the CRM's port).
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as direct:
            async with direct.post(s.crm_url("/login"), data={"username": "jim", "password": "demo"},
                                   allow_redirects=False) as resp:
                crm_cookie = resp.cookies["crm_session"].value
        await s.reset_crm()
        client = s.client(OFFICE, cookie_jar=aiohttp.DummyCookieJar())
        async with client.get(s.url("/dashboard"), headers={"Cookie": f"crm_session={crm_cookie}; theme=dark"},
                              allow_redirects=False) as resp:
            assert resp.status in (302, 303)  # the CRM saw no session: back to its login
        seen = [r for r in await s.crm_requests() if r["path"] == "/dashboard"][-1]
        assert "crm_session" not in seen["cookies"]
        assert "theme" in seen["cookies"]


async def test_the_crm_never_sees_the_gateway_session_cookie(tmp_path: Path) -> None:
    """The gateway's cookie is its own (Pomerium strips its own too): the CRM's logs, debug pages
    and scripts must not hold it. The CRM's own cookies reach it as the browser wrote them."""
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        await login(office, s)
        sent = cookie_header(office, s)
        crm = sent.split("crm_session=", 1)[1].split(";", 1)[0]
        assert "crmgw_session=" in sent
        bare = s.client(OFFICE, cookie_jar=aiohttp.DummyCookieJar())

        async def cookie_lines_at_the_crm(cookie: str) -> list[str]:
            async with bare.get(s.url("/echo"), headers={"Cookie": cookie}) as resp:
                assert resp.status == 200, cookie
                return [v for n, v in (await resp.json())["headers"] if n.lower() == "cookie"]

        assert await cookie_lines_at_the_crm(f"theme=dark;  {sent};lang=en") == [
            f"theme=dark; crm_session={crm}; lang=en"]
        assert await cookie_lines_at_the_crm(sent) == [f"crm_session={crm}"]
        async with bare.get(s.url("/echo"), headers={"Cookie": f"crmgw_session=old; {sent}"}) as resp:
            assert resp.status == 400  # two copies of the gateway's cookie: which one is meant cannot be told
        # Without the gateway's cookie in it, a Cookie line reaches the CRM byte for byte.
        async with bare.get(s.url("/echo"), headers={"Cookie": "theme=dark;  lang=en"}) as resp:
            assert [v for n, v in (await resp.json())["headers"] if n.lower() == "cookie"] == ["theme=dark;  lang=en"]
        # A gateway cookie alone leaves no Cookie line at all.
        jar_cookie = next(part for part in sent.split("; ") if part.startswith("crmgw_session="))
        async with bare.get(s.url("/echo"), headers={"Cookie": jar_cookie}) as resp:
            assert not [n for n, _ in (await resp.json())["headers"] if n.lower() == "cookie"]


async def test_logout_ends_the_gateway_session_even_for_a_copied_cookie(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = s.client(OFFICE)
        await login(client, s)
        copied = cookie_header(client, s)
        async with client.get(s.url("/logout"), allow_redirects=False) as resp:
            assert resp.status in (302, 303)
        replay = s.client(OFFICE, cookie_jar=aiohttp.DummyCookieJar())
        async with replay.get(s.url("/_gateway/whoami"), headers={"Cookie": copied}) as resp:
            assert (await resp.json())["user"] is None
        async with replay.get(s.url("/dashboard"), headers={"Cookie": copied}, allow_redirects=False) as resp:
            assert resp.status in (302, 303)  # the CRM cookie is no longer bound: stripped
        assert s.logs.events("session.logout")


async def test_password_guessing_is_banned_before_the_crm_sees_attempt_n_plus_one(tmp_path: Path) -> None:
    async with stack(tmp_path, login={"max_failures": 3}) as s:
        client = s.client(OFFICE)
        for _ in range(3):
            assert (await login(client, s, user="pat", password="guess")).status == 200
        resp = await login(client, s, user="pat", password="demo")
        assert resp.status == 429
        assert resp.headers["Retry-After"]
        assert len([e for e in await s.crm_logins() if e["username"] == "pat"]) == 3
        assert s.logs.events("login.banned")
        # Another user from another address is unaffected.
        assert (await login(s.client("127.0.0.2"), s, user="jim")).status == 302


async def test_denials_no_rule_made_have_an_access_denied_event_and_count_as_denials(tmp_path: Path) -> None:
    """DESIGN.md §6: one access.denied per denial, also for a ban (429) and a malformed request (400)."""
    async with stack(tmp_path, login={"max_failures": 1}) as s:
        client = s.client(OFFICE)
        assert (await login(client, s, user="pat", password="guess")).status == 200
        banned = await login(client, s, user="pat", password="demo")
        async with client.get(s.url("/a%2Fb")) as bad:
            assert (banned.status, bad.status) == (429, 400)
        denied = {e["request_id"]: e for e in s.logs.events("access.denied")}
        assert denied[banned.headers["X-Request-ID"]]["reason"] == "login_banned"
        assert denied[banned.headers["X-Request-ID"]]["status"] == 429
        assert denied[bad.headers["X-Request-ID"]]["reason"] == "bad_request"
        assert len(denied) == len(s.logs.events("access.denied")) == 2  # one each
        async with client.get(s.url("/_gateway/metrics")) as resp:
            metrics = await resp.text()
        assert 'crmgw_requests_total{decision="deny",reason="login_banned"}' in metrics
        assert 'crmgw_requests_total{decision="deny",reason="bad_request"}' in metrics


async def test_password_guesses_sent_all_at_once_reach_the_crm_no_more_than_max_failures_times(
    tmp_path: Path,
) -> None:
    """The ban was checked before the CRM answered and the failure counted after: 40 guesses sent
    together all reached the CRM. Now each attempt is counted first (and given back on success)."""
    async with stack(tmp_path, login={"max_failures": 5}) as s:
        client = s.client(OFFICE)
        answers = await asyncio.gather(*(login(client, s, user="pat", password=f"guess{i}") for i in range(40)))
        assert len([e for e in await s.crm_logins() if e["username"] == "pat"]) <= 5
        assert {resp.status for resp in answers} == {200, 429}  # the CRM's own "wrong password" page, or refused
        assert (await login(client, s, user="pat")).status == 429  # and pat is banned now


async def test_a_burst_of_guesses_across_usernames_from_one_address_is_capped(tmp_path: Path) -> None:
    """An address's failures are counted as the CRM answers, so its logins waiting for an answer are
    capped at twice the failures allowed: 40 usernames guessed at once all reached the CRM."""
    async with stack(tmp_path, login={"max_failures": 3}) as s:
        client = s.client(OFFICE)
        answers = await asyncio.gather(*(login(client, s, user=f"user{i}", password="guess") for i in range(40)))
        assert len(await s.crm_logins()) <= 2 * 3 + 3
        assert 429 in {resp.status for resp in answers}
        assert s.logs.events("login.rejected_busy")


async def test_logins_whose_clients_left_stop_waiting(tmp_path: Path) -> None:
    """A login whose client left (a closed tab) was cancelled before the CRM answered and stayed counted
    as waiting: four of them made everyone behind the address wait 60 s for a 429."""
    async def slow_crm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    crm = await asyncio.start_server(slow_crm, "127.0.0.1", 0)
    port = crm.sockets[0].getsockname()[1]
    try:
        async with stack(tmp_path, login={"max_failures": 2},
                         upstream={"url": f"http://127.0.0.1:{port}", "read_timeout": 30}) as s:
            for i in range(5):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await login(s.client(OFFICE), s, user=f"user{i}", password="guess")
                await asyncio.sleep(0.05)
            assert not s.logs.events("login.rejected_busy")
    finally:
        crm.close()


async def test_an_offices_own_logins_never_count_against_it(tmp_path: Path) -> None:
    """A username's attempts are counted before the CRM answers (a success clears them); an address's
    failures when it answers: six people logging in at once behind one office address all get in."""
    async with stack(tmp_path, login={"max_failures": 3}) as s:
        assert (await login(s.client(OFFICE), s, user="pat", password="guess")).status == 200
        for _ in range(6):
            assert (await login(s.client(OFFICE), s, user="jim")).status == 302
        users = ("jim", "alice", "bob", "pat", "maria", "sam")
        answers = await asyncio.gather(*(login(s.client(OFFICE), s, user=user) for user in users))
        assert [resp.status for resp in answers] == [302] * 6


async def test_logins_while_the_crm_is_down_do_not_count_against_anyone(tmp_path: Path) -> None:
    """Attempts are counted before they go out; one the CRM never got is given back (else an office
    would be refused logins for find_time after an outage)."""
    async with stack(tmp_path, login={"max_failures": 3},
                     upstream={"url": f"http://127.0.0.1:{free_port()}"}) as s:  # nothing listens there
        for _ in range(6):
            assert (await login(s.client(OFFICE), s, user="pat")).status == 502
        assert not s.logs.events("login.rejected_busy") and not s.logs.events("login.banned")


async def test_2fa_holds_the_crm_session_until_a_valid_code(tmp_path: Path) -> None:
    extra = with_2fa(tmp_path)
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        client = s.client(OFFICE)
        resp = await login(client, s)
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/_gateway/2fa")
        assert "crm_session" not in set_cookie_names(resp)
        # Before the code: the CRM is out of reach and its cookie never appears.
        async with client.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/_gateway/2fa")
            assert "crm_session" not in set_cookie_names(resp)
        async with client.get(s.url("/_gateway/2fa")) as resp:
            page = await resp.text()
            assert resp.status == 200 and 'name="code"' in page
        csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        code = pyotp.TOTP(JIM_SECRET).now()
        # CSRF: a post without the form's token is refused and burns nothing.
        async with client.post(s.url("/_gateway/2fa"), data={"code": code}, allow_redirects=False) as resp:
            assert resp.status == 403
        async with client.post(s.url("/_gateway/2fa"), data={"code": code, "csrf_token": csrf},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/dashboard"
            assert "crm_session" in set_cookie_names(resp)
        async with client.get(s.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 200
        # The same code again, on a fresh login: rejected as a replay.
        other = s.client(OFFICE)
        await login(other, s)
        async with other.get(s.url("/_gateway/2fa")) as resp:
            csrf2 = (await resp.text()).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        async with other.post(s.url("/_gateway/2fa"), data={"code": code, "csrf_token": csrf2},
                              allow_redirects=False) as resp:
            assert resp.status == 401
            assert "crm_session" not in set_cookie_names(resp)


async def test_2fa_locks_out_after_max_failures(tmp_path: Path) -> None:
    extra = with_2fa(tmp_path)
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        client = s.client(OFFICE)
        await login(client, s)
        statuses = []
        for _ in range(4):
            async with client.post(s.url("/_gateway/2fa"), json={"code": "000000"}) as resp:
                statuses.append(resp.status)
        assert statuses[:2] == [401, 401]
        assert statuses[2:] == [429, 429]
        async with client.post(s.url("/_gateway/2fa"), json={"code": pyotp.TOTP(JIM_SECRET).now()}) as resp:
            assert resp.status == 429
            assert (await resp.json())["reason"] == "mfa_locked"


async def test_2fa_next_cannot_redirect_off_site(tmp_path: Path) -> None:
    extra = with_2fa(tmp_path)
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        client = s.client(OFFICE)
        await login(client, s)
        async with client.get(s.url("/_gateway/2fa")) as resp:
            csrf = (await resp.text()).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        async with client.post(s.url("/_gateway/2fa?next=//evil.example/x"),
                               data={"code": pyotp.TOTP(JIM_SECRET).now(), "csrf_token": csrf},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/"


async def test_mobile_app_does_2fa_through_json(tmp_path: Path) -> None:
    extra = with_2fa(tmp_path)
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        app = s.client(HOME, headers={"User-Agent": MOBILE_UA})
        async with app.post(s.url("/login"), json={"username": "jim", "password": "demo"},
                            allow_redirects=False) as resp:
            assert resp.status == 401
            assert await resp.json() == {"mfa_required": True, "mfa_url": "/_gateway/2fa"}
            assert "crm_session" not in set_cookie_names(resp)
        async with app.post(s.url("/_gateway/2fa"), json={"code": pyotp.TOTP(JIM_SECRET).now()}) as resp:
            assert resp.status == 200
            assert "crm_session" in set_cookie_names(resp)
        async with app.get(s.url("/api/mobile/me")) as resp:
            assert resp.status == 200
        async with app.get(s.url("/api/mobile/contacts/export")) as resp:
            assert resp.status == 403
            assert (await resp.json())["reason"] == "function_blocked"


async def test_a_user_who_must_use_2fa_but_has_no_secret_is_told_to_ask_an_admin(tmp_path: Path) -> None:
    extra = with_2fa(tmp_path, enroll=())
    async with stack(tmp_path, policy=policy_with(require_2fa=True), **extra) as s:
        client = s.client(OFFICE)
        resp = await login(client, s, headers={"Accept": "text/html"})
        assert resp.status == 403
        assert not {"crm_session", "crmgw_session"} & set_cookie_names(resp)
        async with client.post(s.url("/login"), data={"username": "jim", "password": "demo"},
                               headers={"Accept": "application/json"}, allow_redirects=False) as resp:
            assert (await resp.json())["reason"] == "mfa_required"


async def test_whoami_tells_a_password_without_its_second_factor_nothing_of_the_users_settings(
    tmp_path: Path,
) -> None:
    """Someone with jim's password alone, from anywhere, read his overrides' reasons (say, a trip abroad)."""
    policy = policy_with(require_2fa=True)
    policy["users"]["jim"] = {"overrides": [{"ip_lockdown": False, "expires": "2099-01-01",
                                             "reason": "Trade fairs in Asia until the 30th"}]}
    async with stack(tmp_path, policy=policy, **with_2fa(tmp_path)) as s:
        client = s.client(OFFICE)
        assert (await login(client, s)).status == 303  # the password, no code yet
        async with client.get(s.url("/_gateway/whoami")) as resp:
            body = await resp.json()
        assert (body["user"], body["allowed"], body["reason"], body["settings"]) == ("jim", False, "mfa_required", None)
        assert "Asia" not in json.dumps(body)
        await submit_code(client, s)
        async with client.get(s.url("/_gateway/whoami")) as resp:
            assert (await resp.json())["settings"]["overrides"] == ["Trade fairs in Asia until the 30th"]


async def test_idle_sessions_expire(tmp_path: Path) -> None:
    async with stack(tmp_path, session={"idle_timeout": "1s", "cookie_secure": False}) as s:
        client = s.client(OFFICE)
        await login(client, s)
        await asyncio.sleep(1.2)
        async with client.get(s.url("/_gateway/whoami")) as resp:
            assert (await resp.json())["user"] is None
