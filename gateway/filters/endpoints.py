"""The gateway's own endpoints under ``/_gateway/``: answered here, never forwarded (DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from yarl import URL

from gateway.exchange import Exchange

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


# How long one round of readiness probes answers for. ``ready`` is reachable from anywhere (load
# balancers and kubelets probe it), and each round opens a connection to the CRM: unshared, a
# locked-out address could turn a flood of ``ready`` requests into a flood of CRM connections.
READY_REUSE = 1.0


class OpsEndpoints:
    """health, ready and metrics: answered before identity, so they work when the session store is down."""

    name = "ops_endpoints"

    def __init__(self, *, probes: dict[str, Probe], metrics: Callable[[Exchange], web.Response] | None = None,
                 info: dict[str, object] | None = None) -> None:
        self.probes = probes
        self.metrics = metrics
        self.info = info or {}
        self._checked: tuple[float, dict[str, bool]] | None = None  # (when, results) of the last round
        self._checking: asyncio.Future[dict[str, bool]] | None = None  # the round under way

    async def checks(self) -> dict[str, bool]:
        """The probes' results: one round at a time, reused for READY_REUSE seconds."""
        loop = asyncio.get_running_loop()
        if self._checked is not None and loop.time() - self._checked[0] < READY_REUSE:
            return self._checked[1]
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._checking)  # a caller that leaves does not cancel it for the rest

    async def _probe(self) -> dict[str, bool]:
        try:
            results = dict(zip(self.probes, await asyncio.gather(*(p() for p in self.probes.values())),
                               strict=True))
            self._checked = (asyncio.get_running_loop().time(), results)
            return results
        finally:
            self._checking = None

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        path = ex.path.match
        if not is_gateway_path(path):
            return None
        if path == f"{PREFIX}/health":
            return json_response(ex, {"status": "ok", **self.info})
        if path == f"{PREFIX}/ready":
            results = await self.checks()
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
            if "text/html" in ex.request.headers.get("Accept", ""):
                return _whoami_page(body)
            return json_response(ex, body)
        # Anything else under /_gateway/ is the gateway's, and unknown.
        return ex.deny(404, "not_found")


_WHOAMI = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Your connection</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}} dt{{font-weight:600}}</style></head>
<body><main><h1>Your connection, as the gateway sees it</h1>
<p>Send these details to your administrator if you cannot reach the CRM.</p>
<dl>{rows}</dl></main></body></html>
"""


def _whoami_page(body: dict[str, object]) -> web.Response:
    settings = body.get("settings")
    shown: dict[str, object] = {
        "Your IP address": body["client_ip"],
        "Connected from": body["peer_ip"],
        "Channel": body.get("channel"),
        "User": body.get("user") or "(not logged in)",
        "Allowed now": "yes" if body.get("allowed") else f"no ({body.get('reason')})",
        "Time": body["time"],
        "Request id": body["request_id"],
    }
    if isinstance(settings, dict):
        shown.update({f"Setting: {key}": value for key, value in settings.items()})
    rows = "".join(
        f"<dt>{html.escape(str(key))}</dt><dd><code>{html.escape(str(value))}</code></dd>"
        for key, value in shown.items()
    )
    return web.Response(text=_WHOAMI.format(rows=rows), content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
