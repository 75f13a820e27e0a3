"""The upstream client (gateway/upstream.py) against loopback servers that send exact bytes.

Each test runs a tiny asyncio server written here: it reads a request head (and
a body framed by Content-Length or chunked), then answers with the bytes the
case gives, so framing, reuse and failures are checked byte for byte.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from gateway import upstream as upstream_module
from gateway.settings import Upstream
from gateway.upstream import UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    """A loopback server; ``connections`` counts accepted connections, ``requests`` keeps every head and body."""

    handler: Handler
    port: int = 0
    connections: int = 0
    open: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and body); None at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lower = head.lower()
        body = b""
        if b"\r\ncontent-length:" in lower:
            length = int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        self.requests.append((head, body))
        return head


def answering(*responses: bytes) -> Handler:
    """A handler answering the requests of each connection with the given responses, in turn."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        for response in responses:
            if await server.read_request(reader) is None:
                return
            writer.write(response)
            await writer.drain()
        await reader.read()  # keep the connection until the client lets go

    return handler


@asynccontextmanager
async def serving(handler: Handler, **settings: float) -> AsyncIterator[tuple[Server, UpstreamPool]]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    pool = UpstreamPool(Upstream(url=f"http://127.0.0.1:{server.port}", **settings))
    try:
        yield server, pool
    finally:
        await pool.close()
        listener.close()
        await listener.wait_closed()


async def get(pool: UpstreamPool, path: str = "/", method: str = "GET",
              body: bytes | AsyncIterator[bytes] | None = None,
              content_length: int | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    response = await pool.request(method, path, [("Host", "crm.example")], body,
                                  content_length=content_length)
    try:
        data = b"".join([chunk async for chunk in response.iter_chunks()])
        return response.status, CIMultiDict(response.headers), data
    finally:
        response.release()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass(frozen=True)
class Framing:
    response: bytes
    body: bytes
    reused: bool  # the connection is kept for the next request
    method: str = "GET"
    status: int = 200


FRAMINGS = {
    "Content-Length": Framing(OK, b"ok", reused=True),
    "chunked, with chunk extensions and trailers (dropped)": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
        b"hello world", reused=True),
    "no length, not chunked: the body ends with the connection": Framing(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", b"all of it", reused=False),
    "Connection: close": Framing(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", b"ok", reused=False),
    "HTTP/1.0 without keep-alive": Framing(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", reused=False),
    "HTTP/1.0 with keep-alive": Framing(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", b"ok", reused=True),
    "HEAD: a Content-Length but no body": Framing(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"", reused=True, method="HEAD"),
    "204: no body": Framing(b"HTTP/1.1 204 No Content\r\n\r\n", b"", reused=True, status=204),
    "304: no body despite a Content-Length": Framing(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", b"", reused=True, status=304),
    "100 Continue and 103 Early Hints are skipped": Framing(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK, b"ok", reused=True),
}


@pytest.mark.parametrize("case", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_response_framing_and_connection_reuse(case: Framing) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(case.response)
            await writer.drain()
            if not case.reused:
                return

    async with serving(handler) as (server, pool):
        for _ in range(2):
            status, headers, body = await get(pool, method=case.method)
            assert (status, body) == (case.status, case.body)
            assert "X-Checksum" not in headers and "Link" not in headers
            await asyncio.sleep(0.05)  # a close by the server arrives before the next request
        assert server.connections == (1 if case.reused else 2)
        assert len(server.requests) == 2


async def test_headers_keep_their_order_and_duplicates() -> None:
    response = (b"HTTP/1.1 302 Found\r\nSet-Cookie: a=1\r\nLocation: /next\r\nSet-Cookie: b=2\r\n"
                b"X-Empty:\r\nContent-Length: 0\r\n\r\n")
    async with serving(answering(response)) as (_, pool):
        result = await pool.request("GET", "/", [])
        assert (result.status, result.reason) == (302, "Found")
        assert list(result.headers.items()) == [("Set-Cookie", "a=1"), ("Location", "/next"),
                                                ("Set-Cookie", "b=2"), ("X-Empty", ""), ("Content-Length", "0")]
        assert await result.read() == b""
        result.release()


async def test_request_head_and_body_framing() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defg"

    async with serving(answering(OK, OK, OK, OK)) as (server, pool):
        headers = [("Host", "crm.example"), ("Content-Length", "999"), ("X-A", "1"), ("X-A", "2")]
        await pool.request("POST", "/p?q=1", headers, b"form=1")
        (await pool.request("POST", "/p", [], chunks())).release()
        (await pool.request("PUT", "/p", [], chunks(), content_length=7)).release()
        (await pool.request("DELETE", "/p", [])).release()
    heads = [head.decode() for head, _ in server.requests]
    bodies = [body for _, body in server.requests]
    assert heads[0] == "POST /p?q=1 HTTP/1.1\r\nHost: crm.example\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 6\r\n\r\n"
    assert heads[1] == f"POST /p HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert "\r\nContent-Length: 7\r\n" in heads[2] and "Transfer-Encoding" not in heads[2]
    assert "\r\nContent-Length: 0\r\n" in heads[3]
    assert bodies == [b"form=1", b"abcdefg", b"abcdefg", b""]



def test_request_body_framing_on_uvloop_too() -> None:
    """The gateway runs on uvloop, whose transports write several buffers (a chunk and its framing) at once."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_request_head_and_body_framing())


async def test_a_line_break_in_a_header_is_never_sent() -> None:
    async with serving(answering(OK)) as (server, pool):
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/", [("X-Evil", "a\r\nX-Injected: 1")])
    assert server.connections == 0


async def test_a_base_path_in_the_upstream_url_prefixes_every_target() -> None:
    async with serving(answering(OK)) as (server, _):
        pool = UpstreamPool(Upstream(url=f"http://127.0.0.1:{server.port}/crm/"))
        try:
            (await pool.request("GET", "/a?b", [])).release()
        finally:
            await pool.close()
    assert server.requests[0][0].startswith(b"GET /crm/a?b HTTP/1.1\r\n")


async def test_a_pooled_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)  # keep-alive allowed, then the server's own idle timeout closes it
        await writer.drain()

    async with serving(handler) as (server, pool):
        assert (await get(pool))[0] == 200
        assert pool.idle == 1
        await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
        assert (await get(pool))[0] == 200, "a stale connection must not become an error"
        assert server.connections == 2 and len(server.requests) == 2


async def test_a_failing_reused_connection_is_not_retried() -> None:
    """The request reached the CRM, which then broke off: it must not get a second copy."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)
        writer.transport.abort()

    async with serving(handler) as (server, pool):
        assert (await get(pool))[0] == 200
        with pytest.raises(UpstreamError):
            await get(pool, "/second")
        assert len(server.requests) == 2 and server.connections == 1


MALFORMED = {
    "not HTTP at all": b"SPAM SPAM SPAM\r\n\r\n",
    "a status line without a code": b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
    "a header line over 16 KiB": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=" + b"v" * 20 * 1024 + b"\r\n\r\n",
    "too many header lines": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 400 + b"Content-Length: 0\r\n\r\n",
    "a head that never ends (one endless line)": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 4 * 1024 * 1024,
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "101 on a plain request": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "closed before the head": b"",
    "closed in the middle of the head": b"HTTP/1.1 200 OK\r\nContent-Le",
}


@pytest.mark.parametrize("response", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_responses_are_upstream_errors(response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(response)
        await writer.drain()

    async with serving(handler) as (server, pool):
        with pytest.raises(UpstreamError):
            await get(pool)
        assert pool.idle == 0
        await asyncio.sleep(0.05)
        assert server.open == 0, "the broken connection was closed"


async def test_a_12_kib_header_line_passes() -> None:
    response = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=" + b"v" * 12 * 1024 + b"\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answering(response)) as (_, pool):
        status, headers, body = await get(pool)
        assert (status, body, len(headers["Set-Cookie"])) == (200, b"ok", 2 + 12 * 1024)


BROKEN_BODIES = {
    "reset in a Content-Length body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    "reset in a chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
    "reset in a body that only the close ends": b"HTTP/1.1 200 OK\r\n\r\npartial",
}


@pytest.mark.parametrize("response", BROKEN_BODIES.values(), ids=BROKEN_BODIES.keys())
async def test_a_reset_mid_body_is_an_error_not_an_end(response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN

    async with serving(handler) as (_, pool):
        result = await pool.request("GET", "/", [])
        received: list[bytes] = []

        async def read_all() -> None:
            async for chunk in result.iter_chunks():
                received.append(chunk)

        with pytest.raises(UpstreamError):
            await read_all()
        assert b"".join(received) == b"partial"
        result.release()


async def test_a_clean_close_mid_body_with_a_length_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with serving(handler) as (_, pool):
        result = await pool.request("GET", "/", [])
        with pytest.raises(UpstreamError):
            await result.read()
        result.release()


async def test_read_timeout_before_the_head_and_within_the_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        head = await server.read_request(reader)
        while head is not None and head.startswith(b"GET /ok"):
            writer.write(OK)
            head = await server.read_request(reader)
        if head is not None and head.startswith(b"GET /body"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await reader.read()

    async with serving(handler, read_timeout=0.3) as (server, pool):
        loop = asyncio.get_running_loop()
        for _ in range(3):  # quick answers first, on the connection that will then hang
            await get(pool, "/ok")
            await asyncio.sleep(0.2)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await get(pool, "/head")
        assert 0.25 <= loop.time() - started < 1.5
        result = await pool.request("GET", "/body", [])
        started = loop.time()
        with pytest.raises(TimeoutError):
            await result.read()
        assert 0.25 <= loop.time() - started < 1.5
        result.release()
        await asyncio.sleep(0.05)
        assert server.open == 0


async def test_a_body_that_keeps_coming_is_not_timed_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with serving(handler, read_timeout=0.3) as (_, pool):
        assert await get(pool) == (200, CIMultiDict({"Transfer-Encoding": "chunked"}), b"x" * 6)


async def test_connection_refused_is_an_os_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    pool = UpstreamPool(Upstream(url=f"http://127.0.0.1:{port}"))
    with pytest.raises(OSError):
        await get(pool)
    await pool.close()


async def test_an_early_response_while_the_body_is_still_sent() -> None:
    """The CRM refuses an upload at once (413): the answer is relayed, the upload stopped, the connection dropped."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await reader.read()  # drain whatever is still sent, until the client closes

    sent = 0
    forever = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(3):
            sent += 1
            yield b"x" * 1024
        await forever.wait()  # the client never finishes
        yield b"never"

    async with serving(handler) as (server, pool):
        status, _, body = await asyncio.wait_for(get(pool, method="POST", body=upload()), 5)
        assert (status, body) == (413, b"big")
        assert pool.idle == 0, "a connection whose request was cut short is not reused"
        await asyncio.sleep(0.05)
        assert server.open == 0
        assert sent == 3


async def test_a_slow_reader_pauses_the_upstream_and_memory_stays_bounded() -> None:
    size = 32 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"y" * (1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        await reader.read()

    async with serving(handler, read_timeout=0.5) as (_, pool):
        result = await pool.request("GET", "/", [])
        conn = result._conn
        await asyncio.sleep(1.0)  # the reader stalls: longer than read_timeout, which only measures the CRM
        assert conn._buffered <= 2 * upstream_module._HIGH_WATER, conn._buffered
        total = 0
        async for chunk in result.iter_chunks():
            total += len(chunk)
            assert conn._buffered <= 2 * upstream_module._HIGH_WATER
        assert total == size
        result.release()
        assert pool.idle == 1


async def test_idle_connections_are_closed_after_keepalive() -> None:
    async with serving(answering(OK, OK), keepalive=0.2) as (server, pool):
        await get(pool)
        assert (pool.idle, server.open) == (1, 1)
        await asyncio.sleep(0.5)
        assert (pool.idle, server.open) == (0, 0)
        await get(pool)
        assert server.connections == 2


async def test_concurrent_requests_use_separate_connections_and_are_then_pooled() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(OK)

    async with serving(handler) as (server, pool):
        results = await asyncio.gather(*(get(pool) for _ in range(5)))
        assert [r[2] for r in results] == [b"ok"] * 5
        assert (server.connections, pool.idle) == (5, 5)
        await asyncio.gather(*(get(pool) for _ in range(5)))
        assert server.connections == 5


async def test_a_retired_pool_closes_idle_connections_now_and_busy_ones_as_they_end() -> None:
    """A reload changed the upstream: nothing of the old pool is reused, and nothing running is cut."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.1)
            writer.write(OK)

    async with serving(handler) as (server, pool):
        await asyncio.gather(get(pool), get(pool))
        assert (pool.idle, server.open) == (2, 2)
        running = asyncio.ensure_future(get(pool))  # takes one of them
        await asyncio.sleep(0.02)
        pool.retire()
        await asyncio.sleep(0.02)
        assert (pool.idle, server.open) == (0, 1)  # the idle one is closed at once ...
        assert (await running)[2] == b"ok"  # ... the busy one finishes its response ...
        await asyncio.sleep(0.05)
        assert (pool.connections, server.open) == (0, 0)  # ... and is closed then
        assert (await get(pool))[2] == b"ok"  # a request that started under the old config still gets through
        await asyncio.sleep(0.05)
        assert (pool.idle, server.open, server.connections) == (0, 0, 3)


async def test_a_response_left_unread_closes_its_connection() -> None:
    """The client went away mid-stream: the rest of the response is not left on a pooled connection."""
    async with serving(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 1000)) as (
        server, pool
    ):
        result = await pool.request("GET", "/", [])
        result.release()
        assert pool.idle == 0
        await asyncio.sleep(0.05)
        assert server.open == 0


async def test_bytes_after_a_complete_response_make_the_connection_unusable() -> None:
    """A second response to one request (response splitting at the CRM): answered once, then not trusted."""
    async with serving(answering(OK + OK, OK, OK)) as (server, pool):
        assert await get(pool) == (200, CIMultiDict({"Content-Length": "2"}), b"ok")
        assert pool.idle == 0
        assert (await get(pool))[2] == b"ok"
        assert server.connections == 2
