"""Resolve the client's WAN IP from the socket peer and trusted proxies' headers (DESIGN.md §3.1)."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.client_ip import BadClientAddress, ClientIPResolver
from gateway.exchange import Exchange
from gateway.headers import X_FORWARDED_HOST, X_FORWARDED_PROTO
from gateway.logs import get_logger
from gateway.pages import denial
from gateway.settings import ClientIPSettings

log = get_logger("client_ip")

_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


class ClientIPFilter:
    name = "client_ip"

    def __init__(self, settings: ClientIPSettings) -> None:
        self.resolver = ClientIPResolver(trusted_proxies=settings.trusted_proxies, header=settings.header)
        self.header = self.resolver.header
        self.any_trusted = bool(settings.trusted_proxies)

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        if not self.any_trusted or not self.resolver.is_trusted(ex.peer_ip):
            return None  # the peer is the client; ex.client_ip already holds it
        # A trusted front (TLS terminator) says which scheme and host the client used.
        proto = ex.request.headers.get(X_FORWARDED_PROTO, "").split(",", 1)[0].strip().lower()
        if proto in ("http", "https"):
            ex.scheme = proto
        host = ex.request.headers.get(X_FORWARDED_HOST, "").split(",", 1)[0].strip()
        if host and _HOST.fullmatch(host):
            ex.forwarded_host = host
        try:
            ex.client_ip = self.resolver.resolve(ex.peer_ip, ex.request.headers.getall(self.header, ()))
        except BadClientAddress as exc:
            log.warning(
                "request.bad_client_address",
                request_id=ex.request_id,
                peer_ip=str(ex.peer_ip),
                header=self.header,
                error=str(exc),
            )
            return denial(
                status=400,
                reason="bad_request",
                client_ip=str(ex.peer_ip),
                request_id=ex.request_id,
                as_json=ex.wants_json,
            )
        return None
