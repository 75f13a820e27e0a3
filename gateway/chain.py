"""Runs the filter chain for every request; the only code that speaks aiohttp's handler protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from random import getrandbits

from aiohttp import web

from gateway.client_ip import parse_peer
from gateway.exchange import Exchange
from gateway.filters import Filter
from gateway.headers import REQUEST_ID
from gateway.logs import get_logger
from gateway.metrics import record_request

log = get_logger("chain")

Terminal = Callable[[Exchange], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    """16 hex digits: unique enough to find one request in the logs (not a secret, so no syscall)."""
    return f"{getrandbits(64):016x}"


class Chain:
    """Filters in order, then the terminal step (the proxy)."""

    def __init__(self, filters: Sequence[Filter], terminal: Terminal) -> None:
        self.filters = tuple(filters)
        self.terminal = terminal

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            peer_ip = parse_peer(peer[0] if peer else "")
        except ValueError:
            # A Unix socket or a vanished transport: nobody to judge, nothing to forward.
            raise web.HTTPBadRequest() from None
        ex = Exchange(request=request, request_id=request_id, peer_ip=peer_ip, client_ip=peer_ip)
        try:
            for step in self.filters:
                response = await step(ex)
                if response is not None:
                    break
            else:
                response = await self.terminal(ex)
        except (web.HTTPException, ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            # Fail closed: what the gateway cannot decide is not forwarded.
            log.exception("request.failed", request_id=request_id, method=request.method)
            response = ex.deny(500, "internal_error")
        finally:
            for hook in ex.done_hooks:  # also when the client left and the request was cancelled
                await hook(ex)
        if not response.prepared:
            response.headers[REQUEST_ID] = request_id
            await ex.before_send(response)
        if ex.denied is not None and not ex.denial_logged:
            log_denial(ex, response.status)
        record_request(ex, response.status)
        return response


def log_denial(ex: Exchange, status: int) -> None:
    """``access.denied`` for a denial no rule made (a malformed request, a login ban, a 2FA lock-out, the
    session store down): DESIGN.md §6 wants one per denial; the step that denied logged its own details."""
    log.warning("access.denied", **ex.access_fields(), channel=ex.channel, functions=[], rule_id=None,
                rule_title=None, reason=ex.denied, status=status)
