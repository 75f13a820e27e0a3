"""A lean HTTP/1.1 client for the one upstream: a pool of keep-alive connections.

aiohttp's ``ClientSession`` is general (any host, redirects, cookies, tracing,
decompression) and that generality was a third of the gateway's CPU per request.
The gateway talks to one CRM, so this client does only that: asyncio protocols
on pooled connections, responses parsed by llhttp (``httptools``), bodies
streamed both ways under flow control.

Rules it keeps (DESIGN.md, issue 6):

- A request is sent at most once. A legacy CRM may act on a GET, so a reused
  connection that fails is the client's 502, never a silent second copy.
- A connection is reused only after its response was read to the end, with
  keep-alive allowed (not ``Connection: close``, not a plain HTTP/1.0 answer),
  and no request body still being written.
- A pooled connection that the CRM closed while idle is never picked: its EOF
  marks it lost, and ``transport.is_closing()`` is checked before reuse, as
  aiohttp does. What remains is the race where the CRM closes it in the very
  moment the request is sent (the FIN still in flight): that request fails
  with a 502. Keeping ``upstream.keepalive`` under the CRM's own keep-alive
  timeout makes that window all but empty.
- Timeouts as aiohttp's ``ClientTimeout(connect=..., sock_read=...)``: the
  connect timeout bounds opening a connection, the read timeout bounds each
  wait for bytes once the request is sent (stopped while the client is the
  slow one and reading is paused). Both raise ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.settings import Upstream

# The longest status or header line the CRM may send (the same limit as for clients).
MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS = 128  # aiohttp's limit
# Response body bytes buffered before reading from the CRM pauses (the client is slower).
_HIGH_WATER = 256 * 1024
# Idle connections kept for reuse; more than this many idle at once are closed.
MAX_IDLE = 100
# Methods for which an absent body means "no Content-Length" (aiohttp's rule, kept).
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


class UpstreamError(Exception):
    """The CRM could not be reached, broke off, or answered with something that is not HTTP."""


class _Connection(asyncio.Protocol):
    """One TCP connection to the CRM; carries one request and its response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False  # closed (by either side) or broken: never to be reused
        self.idle_since = 0.0
        self.busy = False  # between begin() and the end of the response
        self.on_lost: Callable[[_Connection], None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The exchange in progress.
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False  # a HEAD request: the response ends with its head
        self._head_bytes = 0
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.complete = False
        self.error: BaseException | None = None
        self._framed = False  # the body has a length or is chunked (else it ends with the connection)
        self._keep_alive = False  # the response allows another request on this connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        # The read timeout's clock. One timer per connection, left running across exchanges and
        # re-armed when it fires early: arming and cancelling one per request cost 3% of the CPU.
        self._timer: asyncio.TimerHandle | None = None
        self._clock = False  # the request is out: the CRM's silences count
        self._last_read = 0.0

    # -- the exchange, as the pool and the response drive it --

    def begin(self, method: str) -> None:
        self.busy = True
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        self._head_bytes = 0
        self.status, self.reason, self.headers = 0, "", []
        self.head_done = self.complete = self._framed = self._keep_alive = False
        self.error = None
        self._chunks.clear()
        self._buffered = 0
        self._clock = False

    def _open_transport(self) -> asyncio.Transport:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise UpstreamError("the connection to the CRM closed while the request was sent")
        return self.transport

    def write(self, data: bytes) -> None:
        self._open_transport().write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Several buffers in one go, not joined: uvloop hands them to one writev()."""
        self._open_transport().writelines(parts)

    async def drain(self) -> None:
        if self._write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain
        if self.lost:
            raise UpstreamError("the connection to the CRM closed while the request was sent")

    def on_sent(self, sender: asyncio.Task[None]) -> None:
        """The request body task ended: the response clock starts, or the exchange fails."""
        if sender.cancelled():
            return
        error = sender.exception()
        if error is None:
            self.start_read_timer()
        else:
            failure = UpstreamError(f"the request body could not be sent: {type(error).__name__}")
            failure.__cause__ = error
            self._fail(failure)

    def start_read_timer(self) -> None:
        """The request is out: from now on the CRM may stay silent for read_timeout at most."""
        self._last_read = self.loop.time()
        self._clock = True
        if self.read_timeout and self._timer is None and not self.complete and self.error is None:
            self._timer = self.loop.call_at(self._last_read + self.read_timeout, self._check_read_timer)

    async def wait(self) -> None:
        """Until something changes: the head, a body chunk, the end, or an error."""
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take_chunk(self) -> bytes | None:
        """The next buffered body chunk, or None when nothing is buffered."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < _HIGH_WATER // 4 and self.transport is not None:
            self._reading_paused = False
            self._last_read = self.loop.time()  # the clock measures the CRM, not the client
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return (self.complete and self.error is None and not self.lost and self.transport is not None
                and not self.transport.is_closing() and self._keep_alive)

    def finish(self) -> None:
        """The exchange is over (read to the end or not)."""
        self.busy = self._clock = False
        self._parser = None
        self._chunks.clear()

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_read_timer(self) -> None:
        self._timer = None
        if not self._clock or self.complete or self.error is not None or not self.read_timeout:
            return  # nothing awaited from the CRM now; the next request arms it again
        now = self.loop.time()
        if self._reading_paused:  # the client is the slow one
            deadline = now + self.read_timeout
        else:
            deadline = self._last_read + self.read_timeout
            if now >= deadline:
                self._fail(TimeoutError(f"the CRM sent nothing for {self.read_timeout:g}s"))
                return
        self._timer = self.loop.call_at(deadline, self._check_read_timer)

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport instances

    def connection_lost(self, exc: Exception | None) -> None:
        was_lost, self.lost = self.lost, True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.on_lost is not None:
            self.on_lost(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.busy and not self.complete:
            if exc is None and not was_lost and self._ends_with_connection():
                self._end()  # only a clean close ends a body without a length
            else:
                self._fail(UpstreamError("the CRM closed the connection before the end of the response"))

    def eof_received(self) -> bool:
        if self.busy and not self.complete and self._ends_with_connection():
            self._end()
        elif self.busy and not self.complete:
            self._fail(UpstreamError("the CRM closed the connection before the end of the response"))
        self.lost = True
        return False  # close our side too

    def data_received(self, data: bytes) -> None:
        if not self.busy or self._parser is None:
            self.abort()  # bytes nobody asked for: the connection's framing cannot be trusted
            return
        self._last_read = self.loop.time()
        if not self.head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADERS * MAX_HEADER_LINE:
                self._fail(UpstreamError("the CRM's response head is too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the CRM switched protocols on a plain request"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from the CRM: {exc}"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: nothing on this connection can be trusted
            raise UpstreamError("the CRM sent more than one response")

    def on_status(self, status: bytes) -> None:
        if len(status) > MAX_HEADER_LINE:
            raise UpstreamError("the CRM's status line is too long")
        self.reason = _text(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a chunked body's trailer: dropped, as aiohttp did
        if len(name) + len(value) + 2 > MAX_HEADER_LINE:
            raise UpstreamError("a header line from the CRM is too long")
        if len(self.headers) >= MAX_HEADERS:
            raise UpstreamError("too many headers from the CRM")
        self.headers.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status == 101:
            raise UpstreamError("the CRM switched protocols on a plain request")
        if 100 <= status < 200:
            self.headers, self.reason = [], ""  # an interim answer (100 Continue): wait for the real one
            return
        self.status = status
        self.head_done = True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is complete
        names = {name.lower() for name, _ in self.headers}
        self._framed = "content-length" in names or "transfer-encoding" in names
        if self._head_only:
            self._end()
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # bytes after a HEAD response's head: do not trust this connection again
            self.lost = True
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self._end()

    def _ends_with_connection(self) -> bool:
        return self.head_done and not self._framed and self.status not in (204, 304)

    def _end(self) -> None:
        self.complete = True
        self._clock = False
        self._wake()


class UpstreamResponse:
    """The CRM's answer: status and headers at once, the body read whole or streamed.

    ``release()`` must be called when done with it (the proxy does, in a ``finally``):
    the connection goes back to the pool if the response was read to the end, and is
    closed otherwise, so a client that left mid-stream does not leave a half-read
    response on a pooled connection.
    """

    __slots__ = ("_conn", "_pool", "_sender", "headers", "reason", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection, sender: asyncio.Task[None] | None) -> None:
        self._pool = pool
        self._conn = conn
        self._sender = sender
        self.status = conn.status
        self.reason = conn.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(conn.headers))

    async def read(self) -> bytes:
        """The whole body; for bodies known to be small."""
        conn, parts = self._conn, []
        while True:
            chunk = conn.take_chunk()
            if chunk is not None:
                parts.append(chunk)
            elif conn.error is not None:
                raise conn.error
            elif conn.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            else:
                await conn.wait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError or TimeoutError if it breaks off."""
        conn = self._conn
        while True:
            chunk = conn.take_chunk()
            if chunk is not None:
                yield chunk
            elif conn.error is not None:
                raise conn.error
            elif conn.complete:
                return
            else:
                await conn.wait()

    def close(self) -> None:
        """Drop the connection, whatever is left of the response."""
        self._conn.abort()

    def release(self) -> None:
        conn, sender = self._conn, self._sender
        if sender is not None and not sender.done():
            sender.cancel()  # the CRM answered before the whole body was sent: stop sending it
            conn.abort()
        conn.finish()
        if conn.reusable():
            self._pool._put(conn)
        elif conn.complete:
            conn.close()  # Connection: close, or HTTP/1.0
        else:
            conn.abort()  # the rest of the response is not wanted (a client that left, a hook's answer)


class UpstreamPool:
    """Keep-alive connections to the CRM, per process; opened and closed by the app's cleanup_ctx.

    Connections are not capped in number (as with the TCPConnector(limit=0) this replaces:
    the CRM's own worker count is the limit that matters); at most MAX_IDLE are kept idle,
    each for ``upstream.keepalive`` seconds.
    """

    def __init__(self, upstream: Upstream, *, max_idle: int = MAX_IDLE) -> None:
        url = URL(upstream.url)
        assert url.host is not None
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        host = url.raw_host or url.host
        self.host_header = host if url.is_default_port() else f"{host}:{url.port}"
        self.base_path = url.raw_path.rstrip("/")
        self.connect_timeout = upstream.connect_timeout
        self.read_timeout = upstream.read_timeout
        self.keepalive = upstream.keepalive
        self.max_idle = max_idle
        self._idle: collections.deque[_Connection] = collections.deque()  # oldest first
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def connections(self) -> int:
        """Open connections, idle or in use."""
        return len(self._open)

    async def request(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                      body: bytes | AsyncIterable[bytes] | None = None, *,
                      content_length: int | None = None) -> UpstreamResponse:
        """Send one request (once) and wait for the response's head.

        ``target`` is the path and query below the upstream URL's own path. ``headers``
        (name-value pairs, written in their order) are completed with Host when absent and
        the body's framing. A streamed body goes with ``content_length`` when the
        client gave one, else chunked.
        """
        head = self._head(method, target, headers, body, content_length)
        conn = await self._acquire()
        conn.begin(method)
        sender: asyncio.Task[None] | None = None
        try:
            if body is None or isinstance(body, bytes):
                conn.write(head + body if body else head)
                conn.start_read_timer()
            else:
                conn.write(head)
                sender = asyncio.ensure_future(_send_body(conn, body, chunked=content_length is None))
                sender.add_done_callback(conn.on_sent)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            if sender is not None:
                sender.cancel()
            conn.finish()
            conn.abort()
            raise
        return UpstreamResponse(self, conn, sender)

    def retire(self) -> None:
        """Keep no connection any longer (a reload changed the upstream): idle ones close now, busy ones as they end.

        Requests already running finish on their connections; one that starts after this
        (with the chain it started with) still gets a connection, closed when it ends.
        """
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.popleft().close()

    async def close(self) -> None:
        self.retire()
        for conn in list(self._open):
            conn.abort()
        await asyncio.sleep(0)  # let the transports call connection_lost

    def _head(self, method: str, target: str, headers: Sequence[tuple[str, str]],
              body: bytes | AsyncIterable[bytes] | None, content_length: int | None) -> bytes:
        lines = [f"{method} {self.base_path}{target} HTTP/1.1"]
        host = length = False
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING_HEADERS:
                if body is not None:
                    continue  # the body's own framing is written below
                length = length or lower == "content-length"
            host = host or lower == "host"
            lines.append(f"{name}: {value}")
        if not host:
            lines.append(f"Host: {self.host_header}")
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is not None:  # a stream: of the length the client gave, else chunked
            chunked = content_length is None
            lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {content_length}")
        elif method not in _BODYLESS_METHODS and not length:
            lines.append("Content-Length: 0")
        text = "\r\n".join(lines) + "\r\n\r\n"
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            raise ValueError("a line break inside the request line or a header")  # never sent: no smuggling
        return text.encode("utf-8", "surrogateescape")

    async def _acquire(self) -> _Connection:
        # Not asyncio.get_running_loop(): Python 3.11's asks getpid(), a system call, every time.
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        cutoff = loop.time() - self.keepalive
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be timed out
            transport = conn.transport
            if not conn.lost and transport is not None and not transport.is_closing() and conn.idle_since > cutoff:
                return conn
            conn.close()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(loop, self.read_timeout), self.host, self.port,
                ssl=self.ssl, server_hostname=self.host if self.ssl else None,
            )
        self._open.add(conn)
        conn.on_lost = self._open.discard
        return conn

    def _put(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        loop = conn.loop
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if len(self._idle) > self.max_idle:
            self._idle.popleft().close()
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self.keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than keepalive; runs only while some are idle."""
        self._sweeper = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        cutoff = loop.time() - self.keepalive
        while self._idle and (self._idle[0].idle_since <= cutoff or self._idle[0].lost):
            self._idle.popleft().close()
        if self._idle:
            self._sweeper = loop.call_at(self._idle[0].idle_since + self.keepalive, self._sweep)


async def _send_body(conn: _Connection, body: AsyncIterable[bytes], *, chunked: bool) -> None:
    """Stream a request body to the CRM, as fast as it reads it and no faster."""
    async for chunk in body:
        if not chunk:
            continue
        if chunked:  # the chunk is not copied into its framing: a copy per chunk was a quarter of the CPU
            conn.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
        else:
            conn.write(chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


def _text(raw: bytes) -> str:
    """A CRM's header bytes as text: UTF-8, else Latin-1 (RFC 9110 obs-text), never losing a byte.

    The client's response is written as UTF-8 (aiohttp), which drops lone surrogates: a
    ``surrogateescape`` reading turned ``Location: /<0xFF>/evil.example/`` into
    ``//evil.example/``, a redirect off site. Read as Latin-1, a byte that is not UTF-8 reaches
    the client as two (``Müller`` as ``MÃ¼ller``), all above 0x7F: no slash or backslash appears.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
