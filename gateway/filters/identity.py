"""Who is this? The gateway session's user, or the username a login POST submits (DESIGN.md §4).

Also guards the CRM's own session cookie: one that is not bound to this
gateway session is removed before forwarding, so a CRM session obtained around
the gateway (or before it was installed) is useless through it.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs

from aiohttp import web

from gateway.exchange import Exchange
from gateway.filters.policy import facts_of
from gateway.logs import get_logger
from gateway.pages import denial
from gateway.policy import Policy
from gateway.sessions import SessionStore, fingerprint, save_session_later
from gateway.settings import LoginSettings
from gateway.state import StateUnavailable

log = get_logger("identity")

MAX_LOGIN_BODY = 64 * 1024


def normalise_username(value: object) -> str | None:
    """Usernames are matched case-insensitively: 'JIM ' must not slip past a rule about 'jim'."""
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    return name or None


def username_from_body(body: bytes, content_type: str, field: str) -> str | None:
    """The submitted username from a url-encoded, multipart or JSON login body."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return normalise_username(data.get(field)) if isinstance(data, dict) else None
    if kind == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            return None
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == field:
                payload = part.get_payload(decode=True)
                return normalise_username(payload.decode("utf-8", "replace")) if isinstance(payload, bytes) else None
        return None
    values = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get(field)
    return normalise_username(values[0]) if values else None


class IdentityFilter:
    name = "identity"

    def __init__(self, store: SessionStore, policy: Policy, login: LoginSettings | None, *,
                 case_insensitive: bool) -> None:
        self.store = store
        self.policy = policy
        self.login = login
        fold = str.lower if case_insensitive else str
        self.login_path = fold(login.path) if login else None
        self.logout_paths = frozenset(fold(p) for p in login.logout_paths) if login else frozenset()
        self.crm_cookie = login.upstream_session_cookie if login else None

    def is_login(self, ex: Exchange) -> bool:
        assert ex.path is not None
        return (
            self.login is not None
            and ex.path.match == self.login_path
            and ex.request.method == self.login.method
        )

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        request = ex.request
        try:
            session = await self.store.load(request)
        except StateUnavailable as exc:
            if ex.path.match.startswith("/_gateway/") or self.policy.decide(facts_of(ex, user=None)).public:
                return None  # public pages stay up without the store; nobody is identified
            log.error("session.store_unavailable", request_id=ex.request_id, error=str(exc))
            return denial(status=503, reason="session_store_unavailable", client_ip=str(ex.client_ip),
                          request_id=ex.request_id, as_json=ex.wants_json, retry_after=5)
        ex.session = session
        ex.user = session.get("user")
        if self.store.touch(session) or (not session.new and "user" not in session):
            save_session_later(ex, self.store)

        if self.crm_cookie and self.crm_cookie in request.cookies:
            bound = None if "pending" in session else session.get("crm")
            if bound is None or bound != fingerprint(request.cookies[self.crm_cookie]):
                ex.strip_cookies.add(self.crm_cookie)
                log.info("session.crm_cookie_stripped", request_id=ex.request_id, user=ex.user,
                         client_ip=str(ex.client_ip))

        if ex.path.match in self.logout_paths and "user" in session:
            # The CRM still gets this request with its (bound) cookie, so it ends its session too.
            log.info("session.logout", request_id=ex.request_id, user=ex.user, client_ip=str(ex.client_ip))
            await self.store.end(session)
            save_session_later(ex, self.store)
        elif self.is_login(ex):
            return await self._read_login(ex)
        return None

    async def _read_login(self, ex: Exchange) -> web.StreamResponse | None:
        """Read the (small) login body to learn the username; it is forwarded unchanged."""
        assert self.login is not None
        request = ex.request
        if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
            return self._bad(ex, "login body too large")
        body = bytearray()
        while chunk := await request.content.read(65536):
            body.extend(chunk)
            if len(body) > MAX_LOGIN_BODY:
                return self._bad(ex, "login body too large")
        ex.body = bytes(body)
        ex.user = username_from_body(ex.body, request.headers.get("Content-Type", ""),
                                     self.login.username_field)
        ex.state["login_attempt"] = True
        return None

    def _bad(self, ex: Exchange, why: str) -> web.StreamResponse:
        log.warning("request.bad_login", request_id=ex.request_id, client_ip=str(ex.client_ip), error=why)
        return denial(status=400, reason="bad_request", client_ip=str(ex.client_ip),
                      request_id=ex.request_id, as_json=ex.wants_json)
