"""A CRM that misbehaves on purpose: a tiny HTTP/1.1 server over raw asyncio streams.

aiohttp's own server is too well-behaved to imitate a broken back end, so this
one writes bytes by hand. The request path picks the fault:

- ``/ok``             a small 200 with ``Connection: close``
- ``/reset``          headers announcing 1 MiB, 64 KiB of it, then a TCP reset
- ``/garbage``        a reply that is not HTTP at all, then close
- ``/close``          closes the connection without answering
- ``/hang-headers``   reads the request and never answers
- ``/hang-body``      headers announcing 1 MiB, 64 KiB of it, then nothing
- ``/big-header``     a valid 200 whose Set-Cookie line is 12 KiB (``/huge-header``: 20 KiB)
- ``/reset-chunked``, ``/hang-chunked``, ``/reset-unframed``: the same with a chunked
  body, or with a body that only the closing of the connection ends (no length at all)

Hanging handlers wait for the gateway to close its side, so ``open`` tells
whether the gateway let go of its upstream connections after giving up.
``running()`` serves it from a thread of its own, so one faulty CRM can outlive
the event loop of a single test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

BODY_SIZE = 1 << 20
SENT_BEFORE_FAULT = 64 * 1024


class FaultyCRM:
    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open = 0  # connections currently open
        self.seen: list[str] = []  # request paths, in arrival order
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FaultyCRM:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self.server.wait_closed()
        await asyncio.sleep(0.05)  # let the aborted handlers finish

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self._writers.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            path = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
            self.seen.append(path)
            await getattr(self, "_" + path.strip("/").replace("-", "_"), self._ok)(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                     b"Connection: close\r\n\r\nok\n")
        await writer.drain()

    async def _big_header(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          size: int = 12 * 1024) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: crm_prefs=" + b"v" * size + b"; Path=/\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()

    async def _huge_header(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._big_header(reader, writer, size=20 * 1024)

    async def _partial(self, writer: asyncio.StreamWriter, framing: str = "length") -> None:
        """A response head and the first 64 KiB of a body that will never be finished."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        if framing == "length":
            head += b"Content-Length: %d\r\n" % BODY_SIZE
        elif framing == "chunked":
            head += b"Transfer-Encoding: chunked\r\n"
        else:
            head += b"Connection: close\r\n"
        writer.write(head + b"\r\n")
        chunk = b"x" * SENT_BEFORE_FAULT
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if framing == "chunked" else chunk)
        await writer.drain()

    async def _cut(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close with SO_LINGER 0: an RST, not a FIN

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._partial(writer)
        await self._cut(writer)

    async def _reset_chunked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._partial(writer, "chunked")
        await self._cut(writer)

    async def _reset_unframed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._partial(writer, "unframed")
        await self._cut(writer)

    async def _hang_chunked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._partial(writer, "chunked")
        await reader.read()

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SPAM SPAM SPAM\r\n\x00\x01\x02 lovely spam\r\n\r\n")
        await writer.drain()

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return

    async def _hang_headers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the gateway hangs up

    async def _hang_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._partial(writer)
        await reader.read()


@contextlib.contextmanager
def running() -> Iterator[FaultyCRM]:
    """A FaultyCRM served by its own event loop in a daemon thread."""
    crm = FaultyCRM()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(crm.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="faulty-crm", daemon=True)
    thread.start()
    assert started.wait(10), "the faulty CRM did not start"
    try:
        yield crm
    finally:
        asyncio.run_coroutine_threadsafe(crm.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
