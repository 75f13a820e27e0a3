"""The gateway's own endpoints under ``/_gateway/``: answered here, never forwarded (DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from yarl import URL

from gateway.exchange import Exchange
from gateway.pages import denial

PREFIX = "/_gateway"

Probe = Callable[[], Awaitable[bool]]


def is_gateway_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def json_response(ex: Exchange, body: dict[str, object], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def tcp_probe(url: str, limit: float = 2.0) -> bool:
    """Can a TCP connection be opened to the URL's host and port?"""
    parsed = URL(url)
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.host, parsed.port), timeout=limit
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class OpsEndpoints:
    """health, ready and metrics: answered before identity, so they work when the session store is down."""

    name = "ops_endpoints"

    def __init__(self, *, probes: dict[str, Probe], metrics: Callable[[Exchange], web.Response] | None = None,
                 info: dict[str, object] | None = None) -> None:
        self.probes = probes
        self.metrics = metrics
        self.info = info or {}

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        path = ex.path.match
        if not is_gateway_path(path):
            return None
        if path == f"{PREFIX}/health":
            return json_response(ex, {"status": "ok", **self.info})
        if path == f"{PREFIX}/ready":
            results = dict(zip(self.probes, await asyncio.gather(*(p() for p in self.probes.values())),
                               strict=True))
            ready = all(results.values())
            return json_response(ex, {"ready": ready, "checks": results}, status=200 if ready else 503)
        if path == f"{PREFIX}/metrics" and self.metrics is not None:
            return self.metrics(ex)
        return None


class WhoAmI:
    """What an employee sends the admin: their IP as the gateway sees it, channel, user, verdict."""

    name = "whoami"

    def __init__(self, decide: Callable[[Exchange], dict[str, object]]) -> None:
        self.decide = decide

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        if not is_gateway_path(ex.path.match):
            return None
        if ex.path.match == f"{PREFIX}/whoami":
            body: dict[str, object] = {
                "client_ip": str(ex.client_ip),
                "peer_ip": str(ex.peer_ip),
                "request_id": ex.request_id,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            body.update(self.decide(ex))
            return json_response(ex, body)
        # Anything else under /_gateway/ is the gateway's, and unknown.
        return denial(status=404, reason="not_found", client_ip=str(ex.client_ip),
                      request_id=ex.request_id, as_json=ex.wants_json)
