"""A CRM that answers as a test scripts it, and the real gateway in front of it.

For what the demo CRM never does on purpose: a failed login that clears its cookie,
a session regenerated in one answer, a page that sets the gateway's own cookie.
Tests change the :class:`Script` between requests; ``seen`` and ``actions`` are
what reached it.
"""
from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.server import Server
from tests.e2e.harness import OFFICE, POLICY, LogBuffer, gateway_for


@dataclass
class Script:
    """What the scripted CRM answers; tests change it between requests."""
    password: str = "demo"
    # Set-Cookie lines on a successful login (token substituted for {token})
    login_ok_cookies: list[str] = field(default_factory=lambda: ["crm_session={token}; Path=/; HttpOnly"])
    login_ok_status: int = 302
    login_ok_location: str = "/dashboard"
    # what a wrong password gets
    login_fail_status: int = 200
    login_fail_headers: list[tuple[str, str]] = field(default_factory=list)
    # extra headers on GET /page
    page_headers: list[tuple[str, str]] = field(default_factory=list)
    page_size: int = 0  # pad GET /page's body to this many bytes (0: a short text)
    seen: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)
    counter: int = 0


def crm_app(script: Script) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        script.seen.append({"method": request.method, "path": request.raw_path,
                            "cookies": dict(request.cookies), "headers": list(request.headers.items()),
                            "user": script.sessions.get(request.cookies.get("crm_session", ""))})
        return await handler(request)

    app = web.Application(middlewares=[record])

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        if password != script.password:
            resp = web.Response(status=script.login_fail_status, text="bad password")
            for name, value in script.login_fail_headers:
                resp.headers.add(name, value)
            return resp
        script.counter += 1
        token = f"tok{script.counter:04d}x{user}"
        script.sessions[token] = user
        resp = web.Response(status=script.login_ok_status, text="ok")
        resp.headers["Location"] = script.login_ok_location
        for line in script.login_ok_cookies:
            resp.headers.add("Set-Cookie", line.format(token=token, user=user))
        return resp

    async def page(request: web.Request) -> web.StreamResponse:
        user = script.sessions.get(request.cookies.get("crm_session", ""))
        text = f"page for {user}"
        resp = web.Response(text=text.ljust(script.page_size))
        for name, value in script.page_headers:
            resp.headers.add(name, value)
        return resp

    async def action(request: web.Request) -> web.StreamResponse:
        user = script.sessions.get(request.cookies.get("crm_session", ""))
        script.actions.append(f"{request.method} {request.path} by {user}")
        return web.Response(text="done")

    async def ws(request: web.Request) -> web.StreamResponse:
        user = script.sessions.get(request.cookies.get("crm_session", ""))
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(f"{user}:{msg.data}")
        return sock

    app.router.add_post("/login", login)
    app.router.add_get("/page", page)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/other", page)
    app.router.add_route("*", "/contacts/{id}/delete", action)
    app.router.add_get("/ws", ws)

    async def logout(request: web.Request) -> web.StreamResponse:
        script.sessions.pop(request.cookies.get("crm_session", ""), None)
        resp = web.Response(status=302, headers={"Location": "/login"})
        resp.del_cookie("crm_session", path="/")
        return resp

    app.router.add_route("*", "/logout", logout)
    return app


@dataclass
class Rig:
    gw_port: int
    crm_port: int
    script: Script
    logs: LogBuffer
    server: Server
    directory: Path
    clients: list[aiohttp.ClientSession] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gw_port}{path}"

    def client(self, source: str = OFFICE, **kw: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        kw.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))
        session = aiohttp.ClientSession(connector=connector, **kw)
        self.clients.append(session)
        return session


@asynccontextmanager
async def rig(directory: Path, *, policy: dict[str, Any] | None = None, script: Script | None = None,
              **overrides: Any) -> AsyncIterator[Rig]:
    script = script or Script()
    runner = web.AppRunner(crm_app(script), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    crm_port = runner.addresses[0][1]
    try:
        async with gateway_for(directory, crm_port, copy.deepcopy(POLICY) if policy is None else policy,
                               drain_timeout=1.0, **overrides) as (server, _, buffer):
            assert server.port is not None
            rig_ = Rig(server.port, crm_port, script, buffer, server, directory)
            try:
                yield rig_
            finally:
                for client in rig_.clients:
                    await client.close()
    finally:
        await runner.cleanup()
