"""The state of one request as it passes the filter chain.

Filters fill it in order (client IP, path, identity, decision); the proxy reads
it to build the upstream request. It is the only mutable per-request object;
what reaches the decision core is the frozen ``RequestFacts`` built from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp_session import Session

from gateway.pages import DENIALS, denial
from gateway.paths import NormalisedPath
from gateway.schema import IPAddress

if TYPE_CHECKING:
    from gateway.policy import Decision
    from gateway.upstream import UpstreamResponse

# Called with the upstream's response head before anything is sent to the client;
# returning a response replaces the upstream's (e.g. the 2FA step-up holding a login).
UpstreamHook = Callable[["Exchange", "UpstreamResponse"], Awaitable[web.StreamResponse | None]]
# Called with the response about to be sent, whoever made it (e.g. to save the session cookie).
SendHook = Callable[["Exchange", web.StreamResponse], Awaitable[None]]
# Called once the chain is done with the request, however it ended (answered, failed, the client gone).
DoneHook = Callable[["Exchange"], Awaitable[None]]


@dataclass(slots=True, eq=False)
class Exchange:
    request: web.Request
    request_id: str
    peer_ip: IPAddress
    client_ip: IPAddress
    path: NormalisedPath | None = None
    # Scheme and host the client used, as a trusted front reports them (else this connection's).
    scheme: str | None = None
    forwarded_host: str | None = None
    query: str = ""
    channel: str = "web"
    user: str | None = None
    decision: Decision | None = None
    # The gateway session (aiohttp-session), loaded by the identity filter.
    session: Session | None = None
    # A body the gateway had to read (the login form) and forwards in place of the stream.
    body: bytes | None = None
    # Cookie names the proxy must not pass upstream (an unbound CRM session cookie).
    strip_cookies: set[str] = field(default_factory=set)
    upstream_headers: dict[str, str] = field(default_factory=dict)
    upstream_hooks: list[UpstreamHook] = field(default_factory=list)
    send_hooks: list[SendHook] = field(default_factory=list)
    done_hooks: list[DoneHook] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    # The reason of the denial this request got (DESIGN.md §5), and whether its access.denied event is out.
    denied: str | None = None
    denial_logged: bool = False

    async def before_send(self, response: web.StreamResponse) -> None:
        """Run the send hooks; every response path calls this once before prepare()."""
        hooks, self.send_hooks = self.send_hooks, []
        for hook in hooks:
            await hook(self, response)

    def deny(self, status: int, reason: str, *, as_json: bool | None = None,
             retry_after: int | None = None) -> web.Response:
        """The gateway's own answer for this request: a page or JSON with its IP and request id."""
        if status in DENIALS:
            self.denied = reason
        return denial(status=status, reason=reason, client_ip=str(self.client_ip), request_id=self.request_id,
                      as_json=self.wants_json if as_json is None else as_json, retry_after=retry_after)

    def access_fields(self) -> dict[str, str | None]:
        """Who asked for what: the request's part of an ``access.*`` event (DESIGN.md §6)."""
        return {"request_id": self.request_id, "client_ip": str(self.client_ip), "peer_ip": str(self.peer_ip),
                "user": self.user, "method": self.request.method,
                "path": self.path.forward if self.path else None}

    @property
    def wants_json(self) -> bool:
        """Mobile app and API clients get JSON denials, browsers a page."""
        if self.channel != "web":
            return True
        accept = self.request.headers.get("Accept", "")
        return "application/json" in accept and "text/html" not in accept
