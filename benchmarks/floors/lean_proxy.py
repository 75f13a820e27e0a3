"""aiohttp's low-level server in front of the gateway's own upstream pool; no filters, no session, no policy.

    python benchmarks/floors/lean_proxy.py PORT UPSTREAM_PORT

What the gateway's two HTTP sides cost together (benchmarks/floors.py): the same
server library and upstream client as ``serve``, hop-by-hop headers dropped both
ways, bodies read whole.
"""

import asyncio
import sys

import uvloop
from aiohttp import web

from gateway.proxy import _CLIENT_SKIP, _SMALL_BODY_SKIP, end_to_end
from gateway.settings import Upstream
from gateway.upstream import UpstreamPool


async def main() -> None:
    pool = UpstreamPool(Upstream(url=f"http://127.0.0.1:{UPSTREAM_PORT}"))

    async def handle(request: web.BaseRequest) -> web.Response:
        upstream = await pool.request(request.method, request.path_qs, end_to_end(request.headers, _CLIENT_SKIP))
        try:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body,
                                headers=end_to_end(upstream.headers, _SMALL_BODY_SKIP))
        finally:
            upstream.release()

    await asyncio.get_running_loop().create_server(web.Server(handle), "127.0.0.1", PORT)
    await asyncio.Event().wait()


PORT, UPSTREAM_PORT = int(sys.argv[1]), int(sys.argv[2])
uvloop.run(main())
