"""Endpoints for tests and benchmarks: WebSocket, big streams, echo, slowness.

They let end-to-end tests check what the gateway does to traffic (streams without
buffering, forwards WebSocket frames and close codes, which headers it sends,
timeouts) against real sockets. ``/download/large``, ``/upload``, ``/echo``,
``/slow`` and ``/health`` need no login, so a benchmark or a header test does not
have to log in first; ``/ws/notifications`` needs the ``crm_session`` cookie.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import WSMsgType, web

from gateway.demo_crm.sessions import current_user, require_user

CHUNK = 64 * 1024
DEFAULT_DOWNLOAD = 10 * 1024 * 1024
MAX_DOWNLOAD = 4 * 1024**3
MAX_SLOW_SECONDS = 3600.0
# Close codes an endpoint may send (RFC 6455 §7.4: never 1004-1006 or 1015) that aiohttp accepts.
_SENDABLE_CLOSE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)}) | frozenset(range(3000, 5000))


def pattern_chunk(index: int) -> bytes:
    """Chunk ``index`` (64 KiB) of /download/large: sha256(b"crm-demo-<index>") repeated.

    A test recomputes the stream on its own to check that every byte arrived, in order.
    """
    return hashlib.sha256(b"crm-demo-%d" % index).digest() * (CHUNK // 32)


def _query_number(request: web.Request, name: str, default: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw) if "." in raw else int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: expected a number") from None
    if not 0 <= value <= maximum:
        raise web.HTTPBadRequest(text=f"{name}: expected 0 to {maximum:g}")
    return value


async def download_large(request: web.Request) -> web.StreamResponse:
    """Streams ``size`` bytes generated on the fly, chunked unless ``length=1``."""
    size = int(_query_number(request, "size", DEFAULT_DOWNLOAD, MAX_DOWNLOAD))
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
    )
    if request.query.get("length") == "1":
        response.content_length = size
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    full, rest = divmod(size, CHUNK)
    for index in range(full):
        await response.write(pattern_chunk(index))  # waits for the socket: bounded memory
    if rest:
        await response.write(pattern_chunk(full)[:rest])
    await response.write_eof()
    return response


async def _hash_body(request: web.Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        digest.update(chunk)
        count += len(chunk)
    return count, digest.hexdigest()


async def upload(request: web.Request) -> web.Response:
    count, sha256 = await _hash_body(request)
    return web.json_response({"bytes": count, "sha256": sha256})


async def echo(request: web.Request) -> web.Response:
    """What arrived, exactly: ``path`` is the raw request target (aiohttp's raw_path, with ?query)."""
    count, sha256 = await _hash_body(request)
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "query": request.rel_url.raw_query_string,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": count,
            "body_sha256": sha256,
            "user": current_user(request),
        }
    )


async def slow(request: web.Request) -> web.Response:
    seconds = _query_number(request, "seconds", 1.0, MAX_SLOW_SECONDS)
    await asyncio.sleep(seconds)
    return web.Response(text=f"slept {seconds:g}s\n")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def notifications(request: web.Request) -> web.WebSocketResponse:
    """Greets, then echoes text as text and binary as binary; ``close:<code>`` closes with it."""
    user = require_user(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(f"hello {user}")
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            text: str = message.data
            if text.startswith("close:"):
                code_text = text.removeprefix("close:").strip()
                if code_text.isdigit() and int(code_text) in _SENDABLE_CLOSE:
                    await ws.close(code=int(code_text), message=b"closing as asked")
                    break
                await ws.send_str(f"error: cannot close with {code_text!r}")
            else:
                await ws.send_str(text)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/download/large", download_large, allow_head=False)
    router.add_post("/upload", upload)
    router.add_route("*", "/echo", echo)
    router.add_route("*", "/echo/{tail:.*}", echo)
    router.add_get("/slow", slow)
    router.add_get("/health", health)
    router.add_get("/ws/notifications", notifications)
