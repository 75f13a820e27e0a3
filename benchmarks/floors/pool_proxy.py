"""An httptools server in front of the gateway's own upstream pool: what aiohttp's server side costs, by difference.

    python benchmarks/floors/pool_proxy.py PORT UPSTREAM_PORT

The server side of floors/bare_proxy.py (bodyless requests only, not a proxy to
run) with the client side of ``serve`` (gateway/upstream.py) and the same header
hygiene as floors/lean_proxy.py, which differs from this only by aiohttp's
server (benchmarks/floors.py).
"""

import sys

from bare_proxy import Client, run  # this folder is on sys.path when run as a script
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy import _CLIENT_SKIP, _SMALL_BODY_SKIP, end_to_end
from gateway.settings import Upstream
from gateway.upstream import UpstreamPool


class PoolClient(Client):
    pool: UpstreamPool

    async def serve(self) -> None:
        while True:
            method, url, raw = await self.queue.get()
            headers = CIMultiDictProxy(CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw))
            upstream = await self.pool.request(method.decode("ascii"), url.decode("latin-1"),
                                               end_to_end(headers, _CLIENT_SKIP))
            try:
                body = await upstream.read()
            finally:
                upstream.release()
            head = [f"HTTP/1.1 {upstream.status} {upstream.reason}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in end_to_end(upstream.headers, _SMALL_BODY_SKIP)]
            head.append(f"Content-Length: {len(body)}\r\n\r\n")
            self.transport.write("".join(head).encode("latin-1") + body)


if __name__ == "__main__":
    PoolClient.pool = UpstreamPool(Upstream(url=f"http://127.0.0.1:{sys.argv[2]}"))
    run(PoolClient, int(sys.argv[1]))
