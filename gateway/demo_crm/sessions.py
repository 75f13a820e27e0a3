"""The demo CRM's own users, login and sessions: a plain legacy login, nothing clever.

This is deliberately what the gateway has to work with in the field: a login form
(or a JSON login from the mobile app) that answers a redirect and a ``crm_session``
cookie, no rate limiting, no second factor. The gateway learns identity from
exactly this exchange (DESIGN.md §4).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web
from multidict import MultiDictProxy
from yarl import URL

from gateway.demo_crm.html import esc, page
from gateway.demo_crm.record import CRMLog

COOKIE = "crm_session"
DEMO_PASSWORD = "demo"  # noqa: S105 - demo only: the bundled CRM is a toy, never a real deployment
DEMO_USERS: Mapping[str, str] = {
    name: DEMO_PASSWORD for name in ("jim", "bob", "alice", "pat", "maria", "sam")
}
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    created: datetime


class SessionStore:
    """Users and live sessions (token -> user), bounded: the oldest session is dropped first."""

    def __init__(self, users: Mapping[str, str], *, limit: int = MAX_SESSIONS) -> None:
        self.users = dict(users)
        self.limit = limit
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def check_password(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        # Compare even for unknown users so timing does not tell which names exist.
        candidate = (expected if expected is not None else secrets.token_hex(8)).encode()
        return hmac.compare_digest(candidate, password.encode()) and expected is not None

    def create(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(user=user, created=datetime.now(UTC))
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return token

    def user_for(self, token: str | None) -> str | None:
        session = self._sessions.get(token) if token else None
        return session.user if session else None

    def forget(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)


Sessions = web.AppKey("crm_sessions", SessionStore)


def current_user(request: web.Request) -> str | None:
    return request.app[Sessions].user_for(request.cookies.get(COOKIE))


def _wants_api_answer(request: web.Request) -> bool:
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
    return request.path.startswith("/api/") or upgrade == "websocket"


def require_user(request: web.Request) -> str:
    """The logged-in user, or raise what a legacy CRM answers an anonymous visitor.

    Browser pages redirect to the login form with ``next``; the JSON API and the
    WebSocket answer 401 JSON, since neither a mobile app nor a WebSocket client
    can follow a login form.
    """
    user = current_user(request)
    if user is not None:
        return user
    if _wants_api_answer(request):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "not_authenticated"}), content_type="application/json"
        )
    raise web.HTTPFound(location=str(URL("/login").with_query(next=request.raw_path)))


def safe_next(value: object) -> str | None:
    """``next`` only if it stays on this site: a path, never a scheme, host or ``//`` trick."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return None
    # A path that starts with one "/" has no scheme and no host: it stays on this site.
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return value


def _login_form(next_: str | None, *, error: str | None = None) -> web.Response:
    message = f'<p class="error">{esc(error)}</p>' if error else ""
    body = f"""{message}
<form method="post" action="/login">
  <table>
    <tr><td><label for="username">Username</label></td>
        <td><input id="username" name="username" autocomplete="username"></td></tr>
    <tr><td><label for="password">Password</label></td>
        <td><input id="password" name="password" type="password" autocomplete="current-password"></td></tr>
  </table>
  <input type="hidden" name="next" value="{esc(next_ or "")}">
  <button type="submit">Log in</button>
</form>"""
    return page("Log in", body)


async def login_form(request: web.Request) -> web.Response:
    return _login_form(safe_next(request.query.get("next")))


def _field(form: MultiDictProxy[Any] | Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def login_submit(request: web.Request) -> web.Response:
    """Check the credentials; on success set ``crm_session`` and redirect.

    Forms get 302, JSON logins (the mobile app) 303, both to a same-site ``next`` or
    /dashboard. Every attempt goes to the record with the username only.
    """
    content_type = request.content_type
    as_json = content_type == "application/json" or content_type.endswith("+json")
    fields: MultiDictProxy[Any] | Mapping[str, Any]
    if as_json:
        try:
            fields = await request.json()
        except ValueError:
            return web.json_response({"error": "bad_request"}, status=400)
        if not isinstance(fields, dict):
            return web.json_response({"error": "bad_request"}, status=400)
        via = "json"
    else:
        fields = await request.post()  # urlencoded or multipart; anything else reads as empty
        via = "multipart" if content_type == "multipart/form-data" else "form"

    username = _field(fields, "username") or ""
    password = _field(fields, "password") or ""
    next_ = safe_next(_field(fields, "next")) or safe_next(request.query.get("next"))
    store = request.app[Sessions]
    ok = bool(username) and store.check_password(username, password)
    request.app[CRMLog].login(username, ok=ok, via=via)

    if not ok:
        if as_json:
            return web.json_response({"error": "invalid_credentials"}, status=401)
        return _login_form(next_, error="Invalid username or password")

    location = next_ or "/dashboard"
    response: web.Response
    if as_json:
        response = web.json_response({"user": username, "location": location}, status=303)
    else:
        response = web.Response(status=302, text=f"Logged in; continue to {location}")
    response.headers[hdrs.LOCATION] = location
    response.set_cookie(COOKIE, store.create(username), httponly=True, path="/", samesite="Lax")
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[Sessions].forget(request.cookies.get(COOKIE))
    response = web.Response(status=302, headers={hdrs.LOCATION: "/login"}, text="Logged out")
    response.del_cookie(COOKIE, path="/")
    return response
