"""Who is this? The gateway session's user, or the username a login POST submits (DESIGN.md §4).

Also guards the CRM's own session cookie: one that is not bound to this
gateway session is removed before forwarding, so a CRM session obtained around
the gateway (or before it was installed) is useless through it.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import unquote

from aiohttp import web

from gateway.cookies import UnreadableCookie, cookie_name_key, crm_cookies
from gateway.exchange import Exchange
from gateway.filters.policy import facts_of
from gateway.forms import UnreadableBody, login_username, read_small_body
from gateway.logs import get_logger
from gateway.policy import Policy
from gateway.sessions import SessionStore, fingerprint, save_session_later
from gateway.settings import LoginSettings
from gateway.state import StateUnavailable

log = get_logger("identity")


def without_url_sessions(forward: str, query: str, name: str) -> tuple[str, str] | None:
    """``forward`` and ``query`` without the path parameters and query fields named like the CRM cookie.

    Servlet containers read a session id from ``;jsessionid=`` in the path, PHP (with
    ``use_only_cookies`` off) from the query: a CRM session carried there would reach
    the CRM unbound, with the request judged as whoever the gateway session says (or
    anonymous). Names are compared as :func:`cookie_name_key` reads them. None when
    neither holds one (the common case: nothing to rebuild).
    """
    wanted = cookie_name_key(name)
    path = forward
    if ";" in forward:
        segments = []
        for segment in forward.split("/"):
            if ";" in segment:
                head, *parameters = segment.split(";")
                segment = ";".join([head, *(p for p in parameters if cookie_name_key(p.partition("=")[0]) != wanted)])
            segments.append(segment)
        path = "/".join(segments)
    kept = query
    if query:
        kept = "&".join(part for part in query.split("&")
                        if cookie_name_key(part.partition("=")[0].replace("+", " ")) != wanted)
    return None if path == forward and kept == query else (path, kept)


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
        """A login POST, also with a trailing slash: routers that ignore it must not get an unjudged login."""
        assert ex.path is not None
        return (
            self.login is not None
            and self.login_path is not None
            and _without_trailing_slash(ex.path.match) == _without_trailing_slash(self.login_path)
            and ex.request.method == self.login.method
        )

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        request = ex.request
        try:
            session = await self.store.load(request)
        except UnreadableCookie as exc:
            return self._bad(ex, str(exc))
        except StateUnavailable as exc:
            public = ex.path.match.startswith("/_gateway/") or self.policy.decide(facts_of(ex, user=None)).public
            if public and not self.is_login(ex):
                # Public pages stay up without the store; nobody is identified. A login is
                # not let through: it could neither be judged by its user nor bound to a session.
                return None
            log.error("session.store_unavailable", request_id=ex.request_id, error=str(exc))
            return ex.deny(503, "session_store_unavailable", retry_after=5)
        ex.session = session
        ex.user = session.get("user")
        if self.store.touch(session) or (not session.new and "user" not in session):
            save_session_later(ex, self.store)

        if self.crm_cookie:
            try:
                found = crm_cookies(request.headers.getall("Cookie", []), self.crm_cookie)
            except UnreadableCookie as exc:
                return self._bad(ex, str(exc))
            bound = None if "pending" in session else session.get("crm")
            if found and not (
                bound is not None
                and len(found) == 1
                and found[0][0] == self.crm_cookie
                and fingerprint(found[0][1]) == bound
            ):
                # Only the bound cookie, alone and spelled exactly, passes: with two copies
                # the CRM may read either one; another spelling may be the same to the CRM.
                ex.strip_cookies.update(name for name, _ in found)
                log.info("session.crm_cookie_stripped", request_id=ex.request_id, user=ex.user,
                         client_ip=str(ex.client_ip), copies=len(found))
            if (";" in ex.path.forward or ex.query) and (
                url := without_url_sessions(ex.path.forward, ex.query, self.crm_cookie)
            ):
                ex.path, ex.query = replace(ex.path, forward=url[0]), url[1]
                log.info("session.crm_url_session_stripped", request_id=ex.request_id, user=ex.user,
                         client_ip=str(ex.client_ip))
            if f"{self.crm_cookie.lower()}=" in unquote(f"{ex.path.forward}?{ex.query}").lower():
                # Elsewhere in the URL (?next=crm_session=X): PHP with use_trans_sid finds it with a
                # plain substring search of the URI, where it cannot be removed alone.
                log.warning("request.bad_url_session", request_id=ex.request_id, client_ip=str(ex.client_ip))
                return ex.deny(400, "bad_request")

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
        field = self.login.username_field
        try:
            ex.body = await read_small_body(request, "login")
            # Back ends that merge query and body (PHP's $_REQUEST, Rails' params) would read it there too.
            ex.user = login_username(ex.body, request.headers.get("Content-Type", ""), field, ex.query)
        except UnreadableBody as exc:
            return self._bad(ex, str(exc))
        if ex.user is None:
            # Judged without a name, the login POST would pass as an anonymous public request:
            # fail closed (it also tells an admin whose username_field is wrong at once).
            return self._bad(ex, f"no {field!r} field in the login body")
        ex.state["login_attempt"] = True
        return None

    def _bad(self, ex: Exchange, why: str) -> web.StreamResponse:
        log.warning("request.bad_login", request_id=ex.request_id, client_ip=str(ex.client_ip), error=why)
        return ex.deny(400, "bad_request")


def _without_trailing_slash(path: str) -> str:
    return path.rstrip("/") or "/"
