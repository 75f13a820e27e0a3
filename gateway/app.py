"""Assemble the gateway: config -> filter chain -> aiohttp application.

The chain is built from one Config and replaced whole on reload, so a request
always sees one consistent policy. Long-lived resources (the upstream
connection pool, the shared-state store) belong to the application and are
opened and closed through ``cleanup_ctx``; they survive reloads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import ClientSession, WSCloseCode, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler

from gateway.chain import Chain
from gateway.config import Config
from gateway.exchange import Exchange
from gateway.filters import Filter
from gateway.filters.client_ip import ClientIPFilter
from gateway.filters.endpoints import OpsEndpoints, WhoAmI, tcp_probe
from gateway.filters.identity import IdentityFilter
from gateway.filters.login import LoginFilter
from gateway.filters.paths import PathFilter
from gateway.filters.policy import PolicyFilter, facts_of
from gateway.filters.two_factor import MFAGate, TwoFactorEndpoint
from gateway.logs import get_logger
from gateway.metrics import MetricsEndpoint
from gateway.proxy import Proxy
from gateway.sessions import SessionStore
from gateway.state import SharedState, StateUnavailable, open_state
from gateway.totp import SecretStore, TotpVerifier
from gateway.upstream import MAX_HEADER_LINE, UpstreamPool

log = get_logger("app")


class _ServerLog(logging.Handler):
    """aiohttp's server log, as structured events: one ``request.malformed`` per unparseable request.

    aiohttp logs a request it cannot parse with a traceback quoting the first bytes of the
    offending line: an oversized Cookie or Authorization header, or a token in a URL, would
    land in the log. Only the peer, the status and the kind of error are kept. Anything else
    aiohttp reports keeps its level: its debug notes (a client that left mid-request, logged
    when the event loop runs in debug mode) stay debug; a warning or error (a bug, not a
    client) keeps its traceback.
    """

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if isinstance(exc, HttpProcessingError):
            # aiohttp itself logs non-HTTP bytes on a fresh connection (scanners, TLS on the
            # HTTP port) at debug, to keep them out of the logs; so does the gateway.
            emit = log.debug if record.levelno <= logging.DEBUG else log.warning
            emit("request.malformed", peer_ip=str(peer), status=exc.code, error=type(exc).__name__)
        elif record.levelno < logging.WARNING:
            log.debug("http.server_note", detail=str(record.msg))
        else:
            log.error("http.server_error", detail=str(record.msg), exc_info=record.exc_info)


def server_logger() -> logging.Logger:
    """The logger the gateway's HTTP server reports to (instead of aiohttp's plain-text one)."""
    logger = logging.getLogger("gateway.http")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    if not any(isinstance(handler, _ServerLog) for handler in logger.handlers):
        logger.addHandler(_ServerLog())
    return logger


class Gateway:
    """One process's gateway: current config, current chain, shared resources."""

    def __init__(self, config: Config, *, worker: int = 0) -> None:
        self.config = config
        self.worker = worker
        self.pool: UpstreamPool | None = None
        self.retired_pools: set[UpstreamPool] = set()  # replaced by a reload, closed at the end
        self.client: ClientSession | None = None  # WebSocket upgrades only
        self.chain: Chain | None = None
        self.state: SharedState | None = None
        self.sessions: SessionStore | None = None
        # Draining (DESIGN.md §1, SIGTERM): what is in flight, and the WebSockets to tell we are going.
        self.in_flight = 0
        self.draining = False
        self.websockets: set[web.WebSocketResponse] = set()
        # auto_decompress off: the CRM must get the body bytes the client sent, under the client's
        # own Content-Encoding and Content-Length (decoded bytes under them would desync the stream).
        self.app = web.Application(handler_args={"max_field_size": MAX_HEADER_LINE, "max_line_size": MAX_HEADER_LINE,
                                                 "logger": server_logger(), "auto_decompress": False})
        self.app[GATEWAY] = self
        self.app.cleanup_ctx.append(self._resources_ctx)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def _resources_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """What outlives a reload: the upstream pool, the shared-state store, the session storage."""
        settings = self.config.settings
        self.pool = Proxy.new_pool(settings.upstream)
        self.client = Proxy.new_client(settings.upstream)
        self.state = open_state(settings.session.store, settings.session.redis_url)
        self.sessions = SessionStore(settings.session, self.state,
                                     redis_client=getattr(self.state, "client", None))
        self.sessions.start()
        self.chain = self.build_chain(self.config)
        yield
        await self.sessions.close()
        for pool in (self.pool, *self.retired_pools):
            await pool.close()
        await self.client.close()
        await self.state.close()

    def build_chain(self, config: Config) -> Chain:
        settings = config.settings
        assert self.pool is not None and self.client is not None
        assert self.state is not None and self.sessions is not None
        sessions, state = self.sessions, self.state
        login_path = settings.login.path if settings.login else "/"
        secrets = SecretStore(settings.totp.secrets_file) if settings.totp else None
        verifier = (
            TotpVerifier(secrets, state, max_failures=settings.totp.max_failures)
            if settings.totp and secrets
            else None
        )
        filters: list[Filter] = [
            ClientIPFilter(settings.client_ip),
            PathFilter(case_insensitive=settings.case_insensitive_paths),
            OpsEndpoints(
                probes={"upstream": lambda: tcp_probe(settings.upstream.url), "session_store": state.ping},
                info={"worker": self.worker, "pid": os.getpid()},
                metrics=MetricsEndpoint(settings.metrics.allow),
            ),
            IdentityFilter(sessions, config.policy, settings.login,
                           case_insensitive=settings.case_insensitive_paths),
            TwoFactorEndpoint(verifier, sessions, login_path, policy=config.policy,
                              login_method=settings.login.method if settings.login else "POST",
                              case_insensitive=settings.case_insensitive_paths),
            WhoAmI(self._whoami),
            PolicyFilter(config.policy, sessions, log_allowed=settings.logging.log_allowed),
        ]
        if settings.login is not None:
            filters.append(LoginFilter(settings.login, store=sessions, state=state, policy=config.policy,
                                       secrets=secrets))
        filters.append(MFAGate(sessions, login_path))
        return Chain(filters, Proxy(settings.upstream, self.pool, self.client,
                                      own_cookie=settings.session.cookie_name, websockets=self.websockets,
                                      recheck=self.still_allowed))

    async def still_allowed(self, ex: Exchange) -> str | None:
        """Why an open WebSocket's request would be refused now, with the current policy (None: it passes).

        Its session must still be the one it opened with (not logged out, revoked or past
        ``max_age``; the idle clock is left out: the socket's traffic is activity), and the
        current policy must allow its user from its address at this hour, the second
        factor given where it is now required.
        """
        assert self.sessions is not None
        session = None
        if ex.user is not None:
            try:
                session = await self.sessions.load(ex.request, idle=False)
            except StateUnavailable:
                pass  # the session is judged again at the next check; the policy needs no store
            else:
                if session.get("user") != ex.user:
                    return "session_ended"
        decision = self.config.policy.decide(facts_of(ex, user=ex.user))
        if not decision.allowed:
            return decision.reason or "ip_not_allowed"
        if session is not None and decision.settings.require_2fa and not decision.public and not session.get("mfa"):
            return "mfa_required"
        return None

    def _whoami(self, ex: Exchange) -> dict[str, object]:
        policy = self.config.policy
        decision = policy.decide(facts_of(ex, user=ex.user))
        if ex.session is not None and "pending" in ex.session:
            # A password alone, no second factor yet: the user's settings (their overrides' reasons,
            # such as a trip abroad) are not for whoever typed it.
            return {"channel": decision.channel, "user": ex.user, "allowed": False, "reason": "mfa_required",
                    "settings": None}
        settings = policy.settings_for(ex.user, datetime.now(UTC))
        return {
            "channel": decision.channel,
            "user": ex.user,
            "allowed": decision.action == "allow",
            "reason": decision.reason,
            "settings": {
                "ip_lockdown": settings.ip_lockdown,
                "mobile_any_ip": settings.mobile_any_ip,
                "require_2fa": settings.require_2fa,
                "login_hours": settings.login_hours.describe() if settings.login_hours else None,
                "timezone": settings.timezone,
                "overrides": list(settings.overrides),
            },
        }

    def swap(self, config: Config) -> None:
        """Install a new config; requests already running finish with the chain they started with.

        A changed ``upstream`` section gets a pool of its own: the old one keeps no connection
        (those in use close as their responses end), so every request after the swap goes to
        the new CRM address, with the new timeouts.
        """
        if config.settings.upstream != self.config.settings.upstream and self.pool is not None:
            self.pool.retire()
            self.retired_pools = {pool for pool in self.retired_pools if pool.connections} | {self.pool}
            self.pool = Proxy.new_pool(config.settings.upstream)
        self.chain = self.build_chain(config)
        self.config = config

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """The HTTP server's handler (see server.DirectRunner): the application's one route, without its router."""
        if hdrs.EXPECT in request.headers:
            await _default_expect_handler(request)  # what the router would run: 100 Continue, or 417
        return await self.handle(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.chain is not None
        self.in_flight += 1
        try:
            response = await self.chain.handle(request)
        finally:
            self.in_flight -= 1
        if self.draining:
            response.force_close()  # answer, then close: no further request on this connection
        return response

    async def drain(self, limit: float) -> bool:
        """Let in-flight requests finish, for at most ``limit`` seconds; True when they all did.

        The caller has stopped accepting connections. Requests keep reading their bodies (an
        upload in flight completes); WebSockets, which have no end of their own, are closed
        with 1001 (going away) so that clients reconnect elsewhere instead of holding the drain.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        self.draining = True
        closing = [asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway restarting"))
                   for ws in list(self.websockets)]
        if closing:
            log.info("gateway.closing_websockets", count=len(closing), worker=self.worker)
            await asyncio.wait(closing, timeout=limit)
        # Polled: requests finish several times a second at most during a drain, and the
        # counter stays a plain int on the hot path.
        while self.in_flight and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for task in closing:
            task.cancel()
        return self.in_flight == 0


GATEWAY = web.AppKey("gateway", Gateway)
