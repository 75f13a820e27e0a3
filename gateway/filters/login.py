"""The CRM login, watched from outside (DESIGN.md §4).

Before forwarding a login POST: refuse it with 429 when the username or the
client IP is banned for failing too often (the CRM never sees it), else count
it as a failure in advance. After the CRM answers: on success, give that back,
start a gateway session bound to the CRM's session cookie, and when the user
needs 2FA hold the CRM's response (its cookies and redirect) in the session
instead of sending it; on failure, ban whoever it brought to the limit.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from gateway.cookies import set_cookie, sets_cookie
from gateway.exchange import Exchange
from gateway.logs import get_logger
from gateway.policy import Policy
from gateway.sessions import SessionStore, fingerprint, save_session_later
from gateway.settings import LoginSettings
from gateway.state import SharedState, StateUnavailable
from gateway.totp import SecretStore
from gateway.upstream import UpstreamResponse

log = get_logger("login")

TWO_FACTOR_PATH = "/_gateway/2fa"
# How long a login counts as waiting for the CRM at most (one whose client left is never answered).
WAITING_WINDOW = 60.0


def same_origin_path(location: str | None, host: str | None) -> str:
    """A redirect target that stays on this site: a path, or '/' when it would leave."""
    if not location:
        return "/"
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return "/"
        location = parts.path + (f"?{parts.query}" if parts.query else "")
    if not location.startswith("/") or location.startswith(("//", "/\\")) or any(ord(c) < 32 for c in location):
        return "/"
    return location


class LoginFilter:
    name = "login"

    def __init__(self, login: LoginSettings, *, store: SessionStore, state: SharedState, policy: Policy,
                 secrets: SecretStore | None) -> None:
        self.login = login
        self.store = store
        self.state = state
        self.policy = policy
        self.secrets = secrets

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        if not ex.state.get("login_attempt"):
            return None
        subjects = _subjects(ex)
        try:
            left = [t for t in [await self.state.flagged(f"login:ban:{s}") for s in subjects] if t is not None]
            if left:
                log.warning("login.rejected_banned", request_id=ex.request_id, user=ex.user,
                            client_ip=str(ex.client_ip), seconds_left=int(max(left)))
                return ex.deny(429, "login_banned", retry_after=int(max(left)) + 1)
            # The username's attempt counts as a failure until the CRM says otherwise (a success
            # clears it): logins sent all at once would otherwise all reach the CRM before the
            # first failure was counted (40 guesses at a limit of 5); at most the tries left run at
            # once. The address's failures are counted when the CRM answers (an office behind one
            # address logs many people in at the same time), and its logins waiting for an answer
            # are capped at twice the failures allowed (a burst across many usernames).
            count = await self.state.hit(f"login:fail:user:{ex.user}", self.login.find_time)
            waiting = await self.state.hit(f"login:waiting:ip:{ex.client_ip}", WAITING_WINDOW)
            if count > self.login.max_failures or waiting > 2 * self.login.max_failures:
                await self.state.give_back(f"login:fail:user:{ex.user}")  # it never reached the CRM
                await self.state.give_back(f"login:waiting:ip:{ex.client_ip}")
                log.warning("login.rejected_busy", request_id=ex.request_id, user=ex.user,
                            client_ip=str(ex.client_ip), attempts=count, waiting=waiting)
                return ex.deny(429, "login_banned", retry_after=5)
        except StateUnavailable:
            return ex.deny(503, "session_store_unavailable", retry_after=5)
        ex.state["login_count"] = count
        ex.upstream_hooks.append(self._on_response)
        ex.send_hooks.append(self._unanswered)
        ex.done_hooks.append(self._done_waiting)
        return None

    async def _done_waiting(self, ex: Exchange) -> None:
        """The login no longer waits for the CRM, however it ended (a client that left included)."""
        await self.state.give_back(f"login:waiting:ip:{ex.client_ip}")

    async def _unanswered(self, ex: Exchange, response: web.StreamResponse) -> None:
        """Answered without the CRM's answer: if it could not be reached (502) or the store failed
        (503), the password was never checked.

        That attempt is given back, or a CRM outage would leave a username refused for
        ``find_time`` afterwards. A timeout (504) stays counted: the CRM may have checked it.
        """
        if "login_answered" not in ex.state and response.status in (502, 503):
            await self.state.give_back(f"login:fail:user:{ex.user}")

    def succeeded(self, upstream: UpstreamResponse) -> bool:
        """The ``success`` test, and never a redirect back to the login form.

        Many CRMs answer a wrong password with a redirect to the form (`/login?error`), and
        some open a fresh anonymous session with it (Spring Security's failure handler, a PHP
        script's ``session_start()``): a live session cookie on a redirect proves nothing there.
        """
        if upstream.status not in self.login.success_status:
            return False
        location = upstream.headers.get("Location")
        if location is not None and _path_of(location) == _path_of(self.login.path):
            return False
        wanted = self.login.success_set_cookie
        return wanted is None or set_cookie(upstream.headers.getall("Set-Cookie", ()), wanted,
                                            request_path=self.login.path) is not None

    async def _on_response(self, ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse | None:
        ex.state["login_answered"] = True
        if not self.succeeded(upstream):
            await self._count_failure(ex)
            return None
        user = ex.user
        if user is None or ex.session is None:
            # The CRM opened a session the gateway cannot attribute (no username it could
            # read, or no session store): hand nothing of it to the client. Fail closed.
            log.warning("login.unidentified", request_id=ex.request_id, client_ip=str(ex.client_ip),
                        session_store=ex.session is not None)
            if ex.session is None:
                return ex.deny(503, "session_store_unavailable", retry_after=5)
            return ex.deny(400, "bad_request")
        await self.state.clear(f"login:fail:user:{user}")
        set_cookies = list(upstream.headers.getall("Set-Cookie", ()))
        crm_value = set_cookie(set_cookies, self.login.upstream_session_cookie, request_path=self.login.path)
        session = await self.store.begin(ex.request, ex.session, user)
        session["crm"] = fingerprint(crm_value) if crm_value is not None else None
        session["mfa"] = False
        ex.session = session
        save_session_later(ex, self.store)
        log.info("login.succeeded", request_id=ex.request_id, user=user, client_ip=str(ex.client_ip))
        settings = self.policy.settings_for(user, datetime.now(UTC))
        if not settings.require_2fa:
            return None
        if self.secrets is None or self.secrets.get(user) is None:
            log.warning("mfa.not_enrolled", request_id=ex.request_id, user=user, client_ip=str(ex.client_ip))
            await self.store.end(session)
            return ex.deny(403, "mfa_required")
        # Hold the CRM's answer: nothing of its session reaches the client before the code.
        target = same_origin_path(upstream.headers.get("Location"), ex.request.headers.get("Host"))
        # (the gateway's own cookie is the gateway's: a CRM's Set-Cookie for it is not kept)
        own = self.store.settings.cookie_name
        session["pending"] = {"cookies": [c for c in set_cookies if not sets_cookie(c, own)], "location": target}
        session["csrf"] = os.urandom(16).hex()
        log.info("mfa.challenge", request_id=ex.request_id, user=user, client_ip=str(ex.client_ip))
        return challenge(ex, target)

    async def _count_failure(self, ex: Exchange) -> None:
        """Count the address's failure; ban the address or the username (counted before, see __call__) at the limit."""
        counts = {f"ip:{ex.client_ip}": await self.state.hit(f"login:fail:ip:{ex.client_ip}", self.login.find_time),
                  f"user:{ex.user}": ex.state["login_count"]}
        for subject, count in counts.items():
            if count >= self.login.max_failures:
                await self.state.flag(f"login:ban:{subject}", self.login.ban_time)
                await self.state.clear(f"login:fail:{subject}")
                log.warning("login.banned", request_id=ex.request_id, banned=subject.split(":", 1)[0],
                            user=ex.user, client_ip=str(ex.client_ip), failures=count,
                            ban_seconds=int(self.login.ban_time))
        log.info("login.failed", request_id=ex.request_id, user=ex.user, client_ip=str(ex.client_ip))


def _subjects(ex: Exchange) -> list[str]:
    """What login failures are counted and banned by: the client's address, and the username if any."""
    return [f"ip:{ex.client_ip}"] + ([f"user:{ex.user}"] if ex.user else [])


def challenge(ex: Exchange, target: str) -> web.Response:
    """Send the client to the 2FA step: a redirect for browsers, JSON for the app."""
    url = f"{TWO_FACTOR_PATH}?next={quote(target, safe='')}"
    if ex.wants_json or ex.request.content_type == "application/json":
        return web.Response(status=401, content_type="application/json",
                            text=json.dumps({"mfa_required": True, "mfa_url": TWO_FACTOR_PATH}),
                            headers={"Cache-Control": "no-store"})
    return web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})


def _path_of(location: str) -> str:
    """A URL's path as a router compares it: no query or fragment, no trailing slash, lower case."""
    try:
        path = urlsplit(location.strip()).path
    except ValueError:
        return location
    return (unquote(path).rstrip("/") or "/").lower()
