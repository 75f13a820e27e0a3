"""The Python baseline: the simplest aiohttp pass-through (one shared ClientSession, bodies read whole, no policy).

``python benchmarks/naive_proxy.py PORT UPSTREAM_URL``. Same event loop as the gateway (uvloop), so the
difference between the two is what the gateway does per request, not the loop.
"""

import asyncio
import sys

import uvloop
from aiohttp import ClientSession, DummyCookieJar, web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
       "content-length"}


async def handle(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with request.app["client"].request(request.method, UPSTREAM + request.path_qs, headers=headers,
                                             data=await request.read(), allow_redirects=False) as up:
        body = await up.read()
        return web.Response(status=up.status, body=body,
                            headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})


async def client_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app["client"] = ClientSession(auto_decompress=False, cookie_jar=DummyCookieJar())
    yield
    await app["client"].close()


PORT, UPSTREAM = int(sys.argv[1]), sys.argv[2].rstrip("/")
app = web.Application(client_max_size=4 * 1024**3)  # bodies are read whole: let 1 GiB through
app.cleanup_ctx.append(client_ctx)
app.router.add_route("*", "/{tail:.*}", handle)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
