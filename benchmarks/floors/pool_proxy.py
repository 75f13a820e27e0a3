"""An httptools server in front of the gateway's own upstream pool: what aiohttp's server side costs, by difference.

    python benchmarks/floors/pool_proxy.py PORT UPSTREAM_PORT

The server side of floors/bare_proxy.py (bodyless requests only, not a proxy to
run) with the client side of ``serve`` (gateway/upstream.py) and the same header
hygiene as floors/lean_proxy.py, which differs from this only by aiohttp's
server (benchmarks/floors.py).
"""

import asyncio
import sys

import httptools
import uvloop
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy import _CLIENT_SKIP, _SMALL_BODY_SKIP, end_to_end
from gateway.settings import Upstream
from gateway.upstream import UpstreamPool


class Client(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[tuple[str, str, CIMultiDictProxy[str]]] = asyncio.Queue()
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.url = b""
        self.task = asyncio.ensure_future(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = CIMultiDict()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        self.queue.put_nowait((method, self.url.decode("latin-1"), CIMultiDictProxy(self.headers)))

    async def serve(self) -> None:
        while True:
            method, target, headers = await self.queue.get()
            upstream = await POOL.request(method, target, end_to_end(headers, _CLIENT_SKIP))
            try:
                body = await upstream.read()
            finally:
                upstream.release()
            head = [f"HTTP/1.1 {upstream.status} {upstream.reason}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in end_to_end(upstream.headers, _SMALL_BODY_SKIP)]
            head.append(f"Content-Length: {len(body)}\r\n\r\n")
            self.transport.write("".join(head).encode("latin-1") + body)


async def main() -> None:
    global POOL
    POOL = UpstreamPool(Upstream(url=f"http://127.0.0.1:{UPSTREAM_PORT}"))
    await asyncio.get_running_loop().create_server(Client, "127.0.0.1", PORT)
    await asyncio.Event().wait()


PORT, UPSTREAM_PORT = int(sys.argv[1]), int(sys.argv[2])
POOL: UpstreamPool
uvloop.run(main())
