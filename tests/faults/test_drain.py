"""SIGTERM under load: stop accepting, finish what is in flight, tell WebSockets we are going, exit 0.

Every kind of in-flight exchange is running when the signal arrives: slow
answers, streaming downloads read slowly, streaming uploads, denials, and open
WebSockets. HTTP exchanges must complete whole (bodies checked byte for byte);
a WebSocket has no end of its own, so the gateway closes it with 1001 (going
away) instead of letting it hold the drain until the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.demo_crm.testbench import pattern_chunk
from gateway.proxy import WS_MAX_CLIENT_MESSAGE
from tests.e2e.harness import HOME, OFFICE, POLICY, GatewayProcess
from tests.faults.support import MiB, start_gateway

DRAIN_TIMEOUT = 10.0
DOWNLOAD = 16 * MiB
UPLOAD = 8 * MiB


def expected_download_digest(size: int) -> str:
    digest = hashlib.sha256()
    for index in range(size // (64 * 1024)):
        digest.update(pattern_chunk(index))
    return digest.hexdigest()


def client(source: str = OFFICE) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def slow_answer(url: str) -> str:
    async with client() as c, c.get(f"{url}/slow?seconds=1.5") as resp:
        return f"{resp.status} {await resp.text()}"


async def slow_download(url: str) -> str:
    """16 MiB read 1 MiB at a time with pauses: in flight for about 2 s."""
    digest = hashlib.sha256()
    async with client() as c, c.get(f"{url}/download/large?size={DOWNLOAD}") as resp:
        async for block in resp.content.iter_chunked(MiB):
            digest.update(block)
            await asyncio.sleep(0.12)
        return f"{resp.status} {digest.hexdigest()}"


async def slow_upload(url: str) -> str:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(UPLOAD // MiB):
            yield b"u" * MiB
            await asyncio.sleep(0.2)

    async with client() as c, c.post(f"{url}/upload", data=body()) as resp:
        result = await resp.json()
        return f"{resp.status} {result['bytes']} {result['sha256']}"


async def denied(url: str) -> str:
    async with client(HOME) as c, c.get(f"{url}/dashboard") as resp:
        await resp.read()
        return str(resp.status)


async def log_in_jim(c: aiohttp.ClientSession, url: str) -> None:
    """Through the gateway: the demo CRM's WebSocket needs its session cookie."""
    async with c.post(f"{url}/login", data={"username": "jim", "password": "demo"}, allow_redirects=False) as resp:
        assert resp.status == 302


async def exit_code(gw: GatewayProcess, timeout: float) -> int:
    assert gw.proc is not None
    return await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, timeout)


async def test_sigterm_under_load_completes_every_in_flight_request_then_exits_0(
    tmp_path: Path, crm_port: int
) -> None:
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY,
                       extra_args=("--drain-timeout", str(DRAIN_TIMEOUT)), upstream={"read_timeout": 10})
    url = f"http://127.0.0.1:{gw.port}"
    try:
        work = (
            [asyncio.ensure_future(slow_answer(url)) for _ in range(15)]
            + [asyncio.ensure_future(slow_download(url)) for _ in range(6)]
            + [asyncio.ensure_future(slow_upload(url)) for _ in range(4)]
            + [asyncio.ensure_future(denied(url)) for _ in range(5)]
        )
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in work[:25]), "everything slow is still in flight"
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
            async with client() as late, late.get(f"{url}/_gateway/health"):
                pass
        results = await asyncio.gather(*work)
        assert await exit_code(gw, DRAIN_TIMEOUT + 5) == 0
        took = time.monotonic() - signalled
    finally:
        gw.stop()
    upload_digest = hashlib.sha256(b"u" * UPLOAD).hexdigest()
    assert results[:15] == ["200 slept 1.5s\n"] * 15
    assert results[15:21] == [f"200 {expected_download_digest(DOWNLOAD)}"] * 6
    assert results[21:25] == [f"200 {UPLOAD} {upload_digest}"] * 4
    assert results[25:] == ["403"] * 5
    assert took < DRAIN_TIMEOUT, f"drained in {took:.1f}s: in-flight work was done, nothing waited for the timeout"
    assert gw.events("gateway.draining") and gw.events("gateway.stopped")


async def test_sigterm_closes_websockets_with_going_away_instead_of_waiting_out_the_drain(
    tmp_path: Path, crm_port: int
) -> None:
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY,
                       extra_args=("--drain-timeout", str(DRAIN_TIMEOUT)), upstream={"read_timeout": 10})
    url = f"http://127.0.0.1:{gw.port}"
    try:
        async with client() as c:
            await log_in_jim(c, url)
            sockets = [await c.ws_connect(f"{url}/ws/notifications") for _ in range(3)]
            for ws in sockets:
                assert await ws.receive_str() == "hello jim"
                await ws.send_str("ping")
                assert await ws.receive_str() == "ping"
            slow = asyncio.ensure_future(slow_answer(url))
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            for ws in sockets:
                message = await asyncio.wait_for(ws.receive(), 5)
                assert message.type == aiohttp.WSMsgType.CLOSE, message
                assert message.data == aiohttp.WSCloseCode.GOING_AWAY, message
                await ws.close()
            closed_after = time.monotonic() - signalled
            assert await slow == "200 slept 1.5s\n", "HTTP in flight still drains normally"
        assert await exit_code(gw, DRAIN_TIMEOUT * 3) == 0
        took = time.monotonic() - signalled
    finally:
        gw.stop()
    assert closed_after < 2, f"WebSockets closed {closed_after:.1f}s after SIGTERM"
    assert took < 4, f"exit {took:.1f}s after SIGTERM: the drain waited on WebSockets"


def peak_rss(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    with open(f"/proc/{gw.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


async def test_a_websocket_message_too_big_closes_with_1009_and_is_never_held_whole(
    tmp_path: Path, crm_port: int
) -> None:
    """aiohttp assembles a message before relaying it: a client's 64 MiB message must not become 64 MiB here."""
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY)
    url = f"http://127.0.0.1:{gw.port}"
    try:
        async with client() as c:
            await log_in_jim(c, url)
            async with c.ws_connect(f"{url}/ws/notifications", max_msg_size=0) as ws:
                assert await ws.receive_str() == "hello jim"
                await ws.send_bytes(b"\x01" * MiB)  # a large message within every limit is relayed
                assert await ws.receive_bytes(timeout=10) == b"\x01" * MiB
                before = peak_rss(gw)
                with contextlib.suppress(ConnectionError):  # the gateway may cut the send short
                    await ws.send_bytes(bytes(4 * WS_MAX_CLIENT_MESSAGE))
                message = await ws.receive(timeout=10)
                assert message.type == aiohttp.WSMsgType.CLOSE, message
                assert message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            grown = peak_rss(gw) - before
            assert grown < 2 * WS_MAX_CLIENT_MESSAGE, f"peak RSS grew by {grown / MiB:.0f} MiB"
            async with c.get(f"{url}/_gateway/health") as resp:  # and the gateway serves on
                assert resp.status == 200
    finally:
        gw.stop()
