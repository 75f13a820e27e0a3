"""Forwarding an allowed request to the CRM: streamed, pooled, hop-by-hop clean.

Bodies are never read whole: the request body is handed to the upstream client
as a stream and the response body is copied chunk by chunk, so memory stays flat
whatever the size. Plain HTTP goes through the gateway's own pooled client
(gateway/upstream.py); WebSocket upgrades go through aiohttp's ``ClientSession``
and are relayed frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import ClientSession, WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway import headers as h
from gateway.caching import cache_short_keys
from gateway.client_ip import address_text
from gateway.cookies import sets_cookie
from gateway.exchange import Exchange
from gateway.logs import get_logger
from gateway.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY
from gateway.settings import Upstream
from gateway.upstream import MAX_HEADER_LINE, UpstreamError, UpstreamPool, UpstreamResponse

log = get_logger("proxy")

# Responses up to this size are read whole and sent in one write (see Proxy._relay_small).
SMALL_BODY = 64 * 1024
# MAX_HEADER_LINE (from gateway.upstream): the longest request line or header line, in either
# direction: what a client may send (a large Cookie) the CRM may send back (a large Set-Cookie).
# The longest a client may leave a response unread before it is cut off (nginx's send_timeout).
# A stalled reader otherwise holds its upstream connection, and a CRM worker, for ever.
SEND_TIMEOUT = 60.0
# The largest WebSocket message a client may send: aiohttp assembles a message whole before
# handing it on, so without a bound one client could make the gateway hold gigabytes. A larger
# one closes the client's socket with 1009 (message too big). The CRM's messages are not bounded.
WS_MAX_CLIENT_MESSAGE = 16 * 1024 * 1024
# An open WebSocket is judged again before each message from the client, and this often when it
# is quiet: a logout, a reload that blocks its user, the end of login hours close it (1008).
WS_RECHECK = 10.0
# The longest a request body may pause (nginx's client_body_timeout): a slow POST otherwise
# holds its upstream connection, and a CRM worker waiting for the rest, for ever.
RECEIVE_TIMEOUT = 60.0


class ClientStalled(Exception):
    """The client stopped sending its body, or reading the response, for longer than allowed."""


# What end_to_end drops besides the hop-by-hop headers, per use: built once, not per request.
# the gateway sets these itself; Cookie is passed on without the gateway's own (Proxy._cookie_for_crm)
_CLIENT_SKIP = h.HOP_BY_HOP | h.OWNED_HEADERS | {"cookie"}
_CLIENT_SKIP_HOST = _CLIENT_SKIP | {"host"}  # ... and Host, when the upstream's own is sent
# The response is re-framed, and the CRM's own request id (if any) replaced by the gateway's.
_STREAM_SKIP = h.HOP_BY_HOP | {h.REQUEST_ID.lower()}
_SMALL_BODY_SKIP = _STREAM_SKIP | {"content-length"}


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str],
               skip: frozenset[str] = h.HOP_BY_HOP) -> list[tuple[str, str]]:
    """The headers without RFC 9110 §7.6.1 hop-by-hop ones (and those named in Connection), as pairs.

    ``skip`` holds lower-case names and includes the hop-by-hop ones.
    """
    if "Connection" in headers:
        skip = skip | h.connection_tokens(headers)
    return [(name, value) for name, value in headers.items() if name.lower() not in skip]


def _strip_cookies(values: list[str], names: frozenset[str]) -> str | None:
    """The Cookie header without the named cookies: one line (None when nothing is left)."""
    if len(values) == 1:
        return _line_without(values[0], names) or None
    return "; ".join(kept for value in values if (kept := _line_without(value, names))) or None


@cache_short_keys(maxsize=1024, longest=4096)  # a browser sends the same Cookie line request after request
def _line_without(line: str, names: frozenset[str]) -> str:
    """One Cookie line without the named cookies, kept byte-for-byte when none is in it."""
    parts = [(part.split("=", 1)[0].strip(), part) for part in line.split(";")]
    if not any(name in names for name, _ in parts):
        return line
    return "; ".join(part.strip() for name, part in parts if name and name not in names)


class Proxy:
    """The terminal step of the chain: send the exchange upstream, stream the answer back."""

    name = "proxy"

    def __init__(self, upstream: Upstream, pool: UpstreamPool, client: ClientSession, *,
                 own_cookie: str, websockets: set[web.WebSocketResponse] | None = None,
                 recheck: Callable[[Exchange], Awaitable[str | None]] | None = None) -> None:
        self.base_text = str(URL(upstream.url)).rstrip("/")
        # Open client WebSockets, shared with the app so that a drain can close them (1001).
        self.websockets: set[web.WebSocketResponse] = set() if websockets is None else websockets
        self.preserve_host = upstream.preserve_host
        self.pool = pool  # plain HTTP
        self.client = client  # WebSocket upgrades only
        # The gateway's session cookie is the gateway's: the CRM (and its logs) never see it.
        self.own_cookie = own_cookie
        self.own_cookies = frozenset({own_cookie})
        # Why an open WebSocket's request would now be refused (None: it still passes).
        self.recheck = recheck

    @staticmethod
    def new_pool(upstream: Upstream) -> UpstreamPool:
        """The process-wide pool of upstream connections; opened and closed by the app's cleanup_ctx."""
        return UpstreamPool(upstream)

    @staticmethod
    def new_client(upstream: Upstream) -> ClientSession:
        """The process-wide WebSocket client; opened and closed by the app's cleanup_ctx."""
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=upstream.keepalive, enable_cleanup_closed=True
        )
        client = ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
        )
        # aiohttp silently sends GET/PUT/DELETE a second time when the connection breaks before
        # an answer. A legacy CRM may have acted on the first copy (many change state on GET), so
        # one client request reaches it at most once; the failure is the client's to see (502).
        # aiohttp's own test client turns the replay off the same way.
        client._retry_connection = False
        return client

    def upstream_url(self, ex: Exchange) -> URL:
        """The CRM's URL for this request: its base (and any base path) plus the normalised path."""
        return URL(self.base_text + upstream_target(ex), encoded=True)

    def upstream_header_pairs(self, ex: Exchange) -> list[tuple[str, str]]:
        """The headers the CRM gets, in order: the client's end-to-end ones, then the gateway's.

        Dropped from the client's: hop-by-hop ones (and those its Connection names), every
        spelling of a header the gateway owns (forwarding, identity), Host unless
        ``preserve_host``, and cookies the identity filter struck out. A list of pairs, built
        in one pass: the upstream client writes them as they are (no multidict per request).
        """
        request = ex.request
        headers = request.headers
        pairs = end_to_end(headers, _CLIENT_SKIP if self.preserve_host else _CLIENT_SKIP_HOST)
        if "Cookie" in headers and (cookie := self._cookie_for_crm(ex)):
            pairs.append(("Cookie", cookie))
        client_ip = address_text(ex.client_ip)
        pairs += ((h.X_FORWARDED_FOR, client_ip), (h.X_REAL_IP, client_ip),
                  (h.X_FORWARDED_PROTO, ex.scheme or request.scheme))
        host = ex.forwarded_host or headers.get("Host")
        if host:
            pairs.append((h.X_FORWARDED_HOST, host))
        pairs.append((h.REQUEST_ID, ex.request_id))
        if ex.upstream_headers:
            replaced = {name.lower() for name in ex.upstream_headers}
            pairs = [(name, value) for name, value in pairs if name.lower() not in replaced]
            pairs += ex.upstream_headers.items()
        return pairs

    def _cookie_for_crm(self, ex: Exchange) -> str | None:
        """The client's Cookie lines as one, without the gateway's cookie and those the identity filter struck out."""
        headers = ex.request.headers
        if "Connection" in headers and "cookie" in h.connection_tokens(headers):
            return None  # named hop-by-hop by the client
        names = self.own_cookies.union(ex.strip_cookies) if ex.strip_cookies else self.own_cookies
        return _strip_cookies(headers.getall("Cookie"), names)

    def upstream_headers(self, ex: Exchange, *, websocket: bool = False) -> CIMultiDict[str]:
        """upstream_header_pairs as a multidict (aiohttp's WebSocket client), without the client's handshake."""
        out = CIMultiDict(self.upstream_header_pairs(ex))
        if websocket:
            for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                         "Sec-WebSocket-Protocol"):
                out.popall(name, None)
        return out

    async def __call__(self, ex: Exchange) -> web.StreamResponse:
        request = ex.request
        if _is_websocket(request):
            return await self._websocket(ex)
        body: bytes | AsyncIterator[bytes] | None = ex.body
        length = None
        if body is None and request.body_exists:
            body, length = _client_body(ex), request.content_length
        started = time.perf_counter()
        try:
            upstream = await self.pool.request(request.method, upstream_target(ex), self.upstream_header_pairs(ex),
                                               body, content_length=length)
        except (TimeoutError, UpstreamError, OSError) as exc:
            if ex.state.get(_STALLED_BODY):
                return self._stalled_body(ex)
            if isinstance(exc, TimeoutError):
                return self._failure(ex, 504, "upstream_timeout")
            if request.transport is None or request.transport.is_closing():
                raise  # the client left; nothing to answer
            return self._failure(ex, 502, "upstream_unavailable", error=type(exc).__name__)
        UPSTREAM_LATENCY.observe(time.perf_counter() - started)
        try:
            for hook in ex.upstream_hooks:
                replacement = await hook(ex, upstream)
                if replacement is not None:
                    await ex.before_send(replacement)
                    return replacement
            return await self._relay(ex, upstream)
        finally:
            upstream.release()

    async def _relay(self, ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= SMALL_BODY and ex.request.method != "HEAD":
            return await self._relay_small(ex, upstream)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(self._response_headers(ex, upstream, _STREAM_SKIP))
        if length is not None and length.isdigit():
            response.content_length = int(length)
        await ex.before_send(response)
        await response.prepare(ex.request)
        if ex.request.method == "HEAD":
            return response
        try:
            # A body without a length ends when the connection does: a reset instead of a clean
            # close is an error here, so half an export is never relayed as all of it.
            async for chunk in upstream.iter_chunks():
                await _send(response, chunk)
        except ClientStalled:
            log.warning("client.stalled", request_id=ex.request_id, client_ip=str(ex.client_ip),
                        method=ex.request.method, path=ex.path.forward if ex.path else None,
                        seconds=SEND_TIMEOUT)
            upstream.close()
            if ex.request.transport is not None:
                ex.request.transport.abort()  # its buffer will not be read either
            return response
        except (UpstreamError, TimeoutError) as exc:
            # Status already sent: the only honest signal left is to cut the connection.
            log.warning("upstream.broken_body", request_id=ex.request_id, error=type(exc).__name__,
                        method=ex.request.method, path=ex.path.forward if ex.path else None)
            upstream.close()
            if ex.request.transport is not None:
                ex.request.transport.close()
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            upstream.close()  # the client left: drop the upstream request too
            raise
        await response.write_eof()
        return response

    async def _relay_small(self, ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
        """A body of known, small length (most CRM pages): read it, then answer with one write.

        Memory stays bounded (SMALL_BODY), and the status can still become a 502
        if the CRM breaks off before the end, since nothing was sent yet.
        """
        try:
            body = await upstream.read()
        except (UpstreamError, TimeoutError) as exc:
            upstream.close()
            return self._failure(ex, 502, "upstream_unavailable", error=type(exc).__name__)
        headers = self._response_headers(ex, upstream, _SMALL_BODY_SKIP)
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        await ex.before_send(response)
        return response

    def _response_headers(self, ex: Exchange, upstream: UpstreamResponse,
                          skip: frozenset[str]) -> list[tuple[str, str]]:
        """The CRM's end-to-end headers for the client, and the gateway's request id.

        A Set-Cookie for the gateway's own session cookie is dropped: a CRM page (one that
        reflects a cookie, or a compromised CRM) must not end a user's gateway session or
        plant another user's in their browser.
        """
        headers = end_to_end(upstream.headers, skip)
        if "Set-Cookie" in upstream.headers:
            kept = [(name, value) for name, value in headers
                    if name.lower() != "set-cookie" or not sets_cookie(value, self.own_cookie)]
            if len(kept) < len(headers):
                log.warning("upstream.own_cookie_dropped", request_id=ex.request_id, client_ip=str(ex.client_ip),
                            path=ex.path.forward if ex.path else None)
            headers = kept
        headers.append((h.REQUEST_ID, ex.request_id))
        return headers

    async def _websocket(self, ex: Exchange) -> web.StreamResponse:
        request = ex.request
        protocols = [
            p.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", ())
            for p in value.split(",")
            if p.strip()
        ]
        try:
            upstream_ws = await self.client.ws_connect(
                self.upstream_url(ex),
                headers=self.upstream_headers(ex, websocket=True),
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, headers={h.REQUEST_ID: ex.request_id})
        except (aiohttp.ClientError, OSError, TimeoutError):
            return self._failure(ex, 502, "upstream_unavailable")
        client_ws = web.WebSocketResponse(
            protocols=[upstream_ws.protocol] if upstream_ws.protocol else (), max_msg_size=WS_MAX_CLIENT_MESSAGE,
            autoping=True,
        )
        client_ws.headers[h.REQUEST_ID] = ex.request_id
        await ex.before_send(client_ws)
        await client_ws.prepare(request)
        self.websockets.add(client_ws)

        async def refused() -> bool:
            """Judged again: if the request would now be refused, the client's socket is closed (1008)."""
            reason = await self.recheck(ex) if self.recheck is not None else None
            if reason is None:
                return False
            log.info("websocket.closed", request_id=ex.request_id, user=ex.user, client_ip=str(ex.client_ip),
                     reason=reason)
            await client_ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"")
            return True

        async def pump(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            broken: WSCloseCode,
        ) -> None:
            async for message in source:
                if source is client_ws and message.type in (WSMsgType.TEXT, WSMsgType.BINARY) and await refused():
                    break
                if message.type == WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                elif message.type == WSMsgType.ERROR:
                    break
            if not sink.closed:
                await sink.close(code=_relayed_close_code(source.close_code, broken), message=b"")

        async def watch() -> None:
            """A quiet socket (or one only the CRM talks on) is judged again every WS_RECHECK seconds."""
            while True:
                await asyncio.sleep(WS_RECHECK)
                if await refused():
                    return

        pumps = [asyncio.ensure_future(pump(client_ws, upstream_ws, WSCloseCode.GOING_AWAY)),
                 asyncio.ensure_future(pump(upstream_ws, client_ws, WSCloseCode.BAD_GATEWAY))]
        tasks = [*pumps, asyncio.ensure_future(watch())] if self.recheck is not None else pumps
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Give the other direction a moment to deliver the close, then stop it.
            await asyncio.wait(pumps, timeout=5)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            self.websockets.discard(client_ws)
            # Still open here, the relay ended without a close from the client (it vanished, or
            # the request was cancelled): the CRM hears "going away", not a normal closure.
            await upstream_ws.close(code=WSCloseCode.GOING_AWAY)
        return client_ws

    def _stalled_body(self, ex: Exchange) -> web.Response:
        log.warning("client.stalled", request_id=ex.request_id, client_ip=str(ex.client_ip),
                    method=ex.request.method, path=ex.path.forward if ex.path else None,
                    seconds=RECEIVE_TIMEOUT, waiting_for="request body")
        response = ex.deny(408, "request_timeout")
        response.force_close()  # the rest of the body may still come: do not read it as a request
        return response

    def _failure(self, ex: Exchange, status: int, reason: str, **extra: str) -> web.Response:
        UPSTREAM_ERRORS.labels(str(status)).inc()
        log.error(
            "upstream.failed",
            request_id=ex.request_id,
            status=status,
            reason=reason,
            method=ex.request.method,
            path=ex.path.forward if ex.path else None,
            **extra,
        )
        return ex.deny(status, reason)


_STALLED_BODY = "proxy.stalled_body"


def upstream_target(ex: Exchange) -> str:
    """The request target below the upstream URL's own path: the normalised path and the query."""
    assert ex.path is not None
    return ex.path.forward + (f"?{ex.query}" if ex.query else "")


async def _client_body(ex: Exchange) -> AsyncIterator[bytes]:
    """The client's request body as it arrives; a pause longer than RECEIVE_TIMEOUT ends it."""
    content = ex.request.content
    while True:
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT):
                chunk = await content.readany()
        except TimeoutError:
            ex.state[_STALLED_BODY] = True  # what the failed upstream request is to be blamed on
            raise ClientStalled from None
        if not chunk:
            return
        yield chunk


async def _send(response: web.StreamResponse, chunk: bytes) -> None:
    """Write a chunk; waiting on a client that does not read is bounded by SEND_TIMEOUT."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            await response.write(chunk)
    except TimeoutError:
        raise ClientStalled from None


def _relayed_close_code(code: int | None, broken: WSCloseCode) -> int:
    """The close code to pass on: the other side's own, unless a close frame may not carry it.

    1005, 1006 and 1015 only describe how a connection ended (no code, no close frame, TLS
    failure) and are never sent (RFC 6455 §7.4.1); browsers fail the connection on them. A
    side that vanished is reported as ``broken``: 1014 for the CRM, 1001 for the client.
    """
    if code is None:
        return WSCloseCode.OK
    if code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return broken if code in (WSCloseCode.ABNORMAL_CLOSURE, 1015) else WSCloseCode.OK


def _is_websocket(request: web.Request) -> bool:
    # Only a GET is one (the paths filter refuses other methods asking for it): the CRM's
    # handshake is a GET, so the request must have been judged as one.
    return request.method == "GET" and h.asks_for_websocket(request.headers)
