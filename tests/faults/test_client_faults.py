"""Clients that misbehave: slowloris, oversized heads, bytes that are not HTTP.

The gateway must answer them (400) or drop them without holding up anyone
else, must not write what they sent into its logs (an oversized Cookie or
Authorization header is still a secret), and must give back the descriptors and
memory they cost once they are gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway import logs
from gateway.config import load_config
from gateway.server import Server
from tests.e2e.harness import HOME, OFFICE, POLICY, LogBuffer, main_config, write_config
from tests.faults.support import Footprint, fetch, start_gateway

SECRET = "s3cr3t-T0ken-"  # repeated into the oversized values; must never reach a log


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def raw_exchange(port: int, data: bytes, source: str = HOME) -> bytes:
    """Send bytes, return what the gateway answers before it closes (or 5 s pass)."""
    reader, writer = await open_from(source, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


async def test_slowloris_connections_hold_up_nobody_and_cost_nothing_once_gone(
    tmp_path: Path, crm_port: int
) -> None:
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY)
    try:
        assert (await fetch(gw.port, "/echo/warm")).status == 200
        baseline = Footprint.of(gw)
        head = b"GET /dashboard HTTP/1.1\r\nHost: crm.example\r\nUser-Agent: slow\r\nX-Padding: " + b"a" * 64
        tricklers = [await open_from(HOME, gw.port) for _ in range(300)]
        latencies = []
        for index in range(30):  # 3 s of trickling, one byte per connection per 0.1 s
            for _reader, writer in tricklers:
                writer.write(head[index % len(head):][:1])
            fresh = await fetch(gw.port, f"/echo/{index}")
            assert fresh.status == 200, fresh
            latencies.append(fresh.seconds)
            await asyncio.sleep(0.1)
        assert max(latencies) < 0.5, f"served slowly beside slowloris: {max(latencies):.2f}s"
        during = Footprint.of(gw)
        assert during.fds >= baseline.fds + 290, "the trickling connections were open meanwhile"
        for _reader, writer in tricklers:
            writer.close()
        await baseline.assert_returned(gw, "300 slowloris connections left")
    finally:
        assert gw.stop() == 0


@asynccontextmanager
async def gateway_in_process(directory: Path, crm_port: int, **server: float) -> AsyncIterator[Server]:
    """The gateway in this event loop, with Server options that ``serve`` does not expose."""
    logs.configure(level="info", fmt="json", stream=LogBuffer())
    path = write_config(directory, main_config(crm_port), {})
    instance = Server(config_path=path, config=load_config(path), watch=False, drain_timeout=2.0, **server)
    await instance.start()
    try:
        yield instance
    finally:
        assert instance.runner is not None
        await instance.runner.cleanup()


async def test_a_request_head_trickled_byte_by_byte_is_cut_off_after_the_idle_timeout(
    tmp_path: Path, crm_port: int
) -> None:
    async with gateway_in_process(tmp_path, crm_port, idle_timeout=1.0) as server:
        assert server.port is not None
        reader, writer = await open_from(HOME, server.port)
        started = time.monotonic()
        head = b"GET /echo HTTP/1.1\r\nHost: crm.example\r\nX-Padding: " + b"a" * 1000
        closed_after = None
        for byte in head:
            if reader.at_eof() or writer.is_closing():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
        writer.close()
        assert closed_after is not None, "the gateway waited for the whole trickled head"
        assert 0.8 <= closed_after < 3, closed_after

        # A connection idle after a request is let go the same way; one in use is not.
        reader, writer = await open_from(OFFICE, server.port)
        for _ in range(3):
            writer.write(b"GET /echo HTTP/1.1\r\nHost: crm.example\r\n\r\n")
            await writer.drain()
            await read_response(reader)
            await asyncio.sleep(0.6)  # each request restarts the clock: 1.8 s in all, still open
        writer.write(b"GET /echo HTTP/1.1\r\nHost: crm.example\r\n\r\n")
        await writer.drain()
        await read_response(reader)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.8 <= time.monotonic() - started < 3
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return await reader.readexactly(length)


def test_the_default_idle_timeout_bounds_slowloris_like_nginx_does() -> None:
    """aiohttp's own default keeps a silent or trickling connection for an hour."""
    default = {f.name: f.default for f in dataclasses.fields(Server)}["idle_timeout"]
    assert isinstance(default, float)
    assert 30 <= default <= 120, "long enough for load balancers' 60 s idle reuse, short against slowloris"


OVERSIZED = {
    "request line of 20 KiB": b"GET /echo?token=" + (SECRET * 1600).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header line of 20 KiB": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20480 + b"\r\n\r\n",
    "Authorization of 20 KiB": b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + (SECRET * 1600).encode() + b"\r\n\r\n",
    "Cookie of 20 KiB": b"GET /echo HTTP/1.1\r\nHost: x\r\nCookie: crmgw_session="
    + (SECRET * 1600).encode() + b"\r\n\r\n",
    "200 header lines": b"GET /echo HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
    "not HTTP at all": b"\x00\x01\x02 hello there\r\n\r\n",
    "Content-Length beside chunked (smuggling shape)": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


async def test_oversized_and_malformed_heads_are_refused_logged_once_and_never_echoed_into_logs(
    tmp_path: Path, crm_port: int
) -> None:
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY)
    try:
        for data in OVERSIZED.values():  # warm-up: the first of each shape allocates
            await raw_exchange(gw.port, data)
        # ...and the pooled connection to the CRM that serves the office in between is part of it.
        assert (await fetch(gw.port, "/echo/still-here", source=OFFICE)).status == 200
        baseline = Footprint.of(gw)
        seen_before = len(gw.events("request.malformed"))
        for label, data in OVERSIZED.items():
            for _ in range(5):
                answer = await raw_exchange(gw.port, data)
                assert status_of(answer) in (400, 431), f"{label}: {answer[:100]!r}"
            office = await fetch(gw.port, "/echo/still-here", source=OFFICE)
            assert office.status == 200, f"after {label}: {office}"
        await baseline.assert_returned(gw, "oversized heads")
        events = gw.events("request.malformed")[seen_before:]
        # Not HTTP at all (scanners, TLS on the HTTP port) is logged at debug only, as aiohttp does.
        assert len(events) == 5 * (len(OVERSIZED) - 1), [e.get("error") for e in events]
        assert {e["peer_ip"] for e in events} == {HOME}
        assert all(e["status"] in (400, 431) and e["error"] for e in events)
        text = gw.log_text()
        assert SECRET not in text, "a secret from an oversized header reached the log"
        assert "Traceback" not in text, "malformed requests are one event each, not a traceback"
    finally:
        assert gw.stop() == 0


async def test_a_client_that_stops_reading_a_download_is_cut_off_and_the_crm_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled reader would hold a CRM worker for ever (legacy CRMs have a handful); nginx's send_timeout."""
    from gateway import proxy
    from tests.e2e.harness import stack, wait_for

    monkeypatch.setattr(proxy, "SEND_TIMEOUT", 1.0)
    async with stack(tmp_path, policy={}) as s:
        crm = s.crm_runner.server
        assert crm is not None
        reader, writer = await open_from(OFFICE, s.port)
        writer.write(b"GET /download/large?size=268435456 HTTP/1.1\r\nHost: crm.example\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await wait_for(lambda: len(crm.connections) == 1)
        started = time.monotonic()  # and now the client reads nothing more
        await wait_for(lambda: not crm.connections, timeout=10)
        assert time.monotonic() - started < 6, "the CRM was released once the send timeout passed"
        stalled = s.logs.events("client.stalled")
        assert len(stalled) == 1 and stalled[0]["path"] == "/download/large", stalled
        assert not s.logs.events("upstream.broken_body"), "the CRM did nothing wrong"
        writer.close()
        async with s.client(OFFICE).get(s.url("/echo/after")) as resp:
            assert resp.status == 200


async def test_a_client_that_stalls_its_upload_gets_a_408_and_the_crm_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow-POST form of slowloris: the body trickles, then stops (nginx's client_body_timeout)."""
    from gateway import proxy
    from tests.e2e.harness import stack, wait_for

    monkeypatch.setattr(proxy, "RECEIVE_TIMEOUT", 1.0)
    async with stack(tmp_path, policy={}) as s:
        crm = s.crm_runner.server
        assert crm is not None
        reader, writer = await open_from(OFFICE, s.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: crm.example\r\nContent-Length: 1000000\r\n\r\n" + b"u" * 1000)
        await writer.drain()
        await wait_for(lambda: len(crm.connections) == 1)
        started = time.monotonic()  # and now the body stops
        answer = await asyncio.wait_for(reader.read(65536), 10)
        assert status_of(answer) == 408, answer[:200]
        assert time.monotonic() - started < 4
        await wait_for(lambda: not crm.connections, timeout=5)
        stalled = s.logs.events("client.stalled")
        assert len(stalled) == 1 and stalled[0]["path"] == "/upload", stalled
        assert not s.logs.events("upstream.failed"), "the CRM did nothing wrong"
        writer.close()
        # A body that keeps coming, however slowly, is not cut.
        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"x" * 1000
                await asyncio.sleep(0.5)

        async with s.client(OFFICE).post(s.url("/upload"), data=trickle()) as resp:
            assert resp.status == 200 and (await resp.json())["bytes"] == 4000
