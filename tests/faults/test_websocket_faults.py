"""WebSocket faults: either side vanishing mid-conversation.

The gateway relays the close to the other side, and the code it sends must be
one a close frame may carry (RFC 6455 §7.4.1): 1006 only describes a connection
that died without a close frame and must never be sent, browsers fail the
connection on it. An upstream that vanished is reported as 1014 (bad gateway),
a client that vanished as 1001 (going away).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from gateway import logs
from gateway.config import load_config
from gateway.server import Server
from tests.e2e.harness import LogBuffer, main_config, wait_for, write_config


class Upstream:
    """A CRM with WebSockets that end badly, recording the close codes it receives."""

    def __init__(self) -> None:
        self.received: list[int | None] = []
        self.open = 0

    async def vanish(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await asyncio.sleep(0.2)
        assert request.transport is not None
        request.transport.abort()  # no close frame: the CRM process died
        return ws

    async def close_with(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close(code=int(request.query["code"]), message=b"bye")
        return ws

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.open += 1
        try:
            await ws.send_str("hello")
            async for message in ws:
                await ws.send_str(message.data)
        finally:
            self.open -= 1
            self.received.append(ws.close_code)
        return ws


@asynccontextmanager
async def gateway_before(directory: Path, upstream: Upstream) -> AsyncIterator[tuple[str, Server]]:
    app = web.Application()
    app.router.add_get("/ws/vanish", upstream.vanish)
    app.router.add_get("/ws/close", upstream.close_with)
    app.router.add_get("/ws/echo", upstream.echo)
    crm = web.AppRunner(app, handle_signals=False)
    await crm.setup()
    site = web.TCPSite(crm, "127.0.0.1", 0)
    await site.start()
    logs.configure(level="info", fmt="json", stream=LogBuffer())
    path = write_config(directory, main_config(crm.addresses[0][1]), {})
    server = Server(config_path=path, config=load_config(path), watch=False, drain_timeout=1.0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", server
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
        await crm.cleanup()


@pytest.mark.parametrize(
    ("path", "code"),
    [("/ws/vanish", WSCloseCode.BAD_GATEWAY), ("/ws/close?code=4001", 4001), ("/ws/close?code=1011", 1011)],
    ids=["the CRM vanishes: 1014 bad gateway, never 1006", "the CRM's own code passes (4001)",
         "the CRM's own code passes (1011)"],
)
async def test_the_client_is_told_how_the_crm_side_ended_with_a_sendable_code(
    tmp_path: Path, path: str, code: int
) -> None:
    upstream = Upstream()
    async with gateway_before(tmp_path, upstream) as (url, server), aiohttp.ClientSession() as client:
        async with client.ws_connect(f"{url}{path}") as ws:
            assert await ws.receive_str(timeout=5) == "hello"
            message = await ws.receive(timeout=5)
            assert (message.type, message.data) == (WSMsgType.CLOSE, code), message
        await wait_for(lambda: not server.gateway.websockets)


async def test_the_crm_is_told_when_the_client_vanishes_with_going_away(tmp_path: Path) -> None:
    upstream = Upstream()
    async with gateway_before(tmp_path, upstream) as (_url, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ws/echo HTTP/1.1\r\nHost: crm.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await wait_for(lambda: upstream.open == 1)
        writer.transport.abort()  # the client's laptop lid closes: no close frame
        await wait_for(lambda: upstream.open == 0)
        assert upstream.received == [WSCloseCode.GOING_AWAY]
        await wait_for(lambda: not server.gateway.websockets)
