"""Normalise the request path once; what rules match is what the CRM receives (DESIGN.md §3.2)."""

from __future__ import annotations

from aiohttp import web

from gateway.caching import ShortKeyCache
from gateway.exchange import Exchange
from gateway.headers import asks_for_websocket
from gateway.logs import get_logger
from gateway.paths import BadPath, normalise_path, split_target

log = get_logger("paths")

# A pure function of the path, and the same few pages are asked for again and again;
# NormalisedPath is frozen, and a refused path (BadPath) is not cached.
_normalise = ShortKeyCache(normalise_path, maxsize=4096, longest=1024)
# Never forwarded: CONNECT asks for a tunnel (the gateway is no forward proxy, and with an
# origin-form target the CRM would read what follows as tunnel bytes or as another request);
# TRACE echoes the request back, cookies and Authorization included (cross-site tracing).
REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})


class PathFilter:
    name = "paths"

    def __init__(self, *, case_insensitive: bool) -> None:
        self.case_insensitive = case_insensitive

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        if ex.request.method in REFUSED_METHODS:
            log.warning("request.bad_method", request_id=ex.request_id, client_ip=str(ex.client_ip),
                        peer_ip=str(ex.peer_ip), method=ex.request.method)
            response = ex.deny(405, "bad_request")
            response.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            return response
        if ex.request.method != "GET" and asks_for_websocket(ex.request.headers):
            # RFC 6455 §4.1: the opening handshake is a GET, and the CRM's would be one,
            # running its GET handler for a request judged as another method.
            log.warning("request.bad_upgrade", request_id=ex.request_id, client_ip=str(ex.client_ip),
                        peer_ip=str(ex.peer_ip), method=ex.request.method)
            return ex.deny(400, "bad_request")
        try:
            raw_path, ex.query = split_target(ex.request.raw_path)
            ex.path = _normalise(raw_path, case_insensitive=self.case_insensitive)
        except BadPath as exc:
            log.warning(
                "request.bad_path",
                request_id=ex.request_id,
                client_ip=str(ex.client_ip),
                peer_ip=str(ex.peer_ip),
                method=ex.request.method,
                error=str(exc),
            )
            return ex.deny(400, "bad_request")
        return None
