"""The floor of a Python proxy: llhttp (httptools) on both sides, uvloop, nothing else.

    python benchmarks/floors/bare_proxy.py PORT UPSTREAM_PORT [BUSY_US]

Not a proxy anyone should run: bodyless requests only, one upstream connection
per client connection, responses read whole, no timeouts, no header hygiene.
It measures what HTTP parsing, the event loop and the four socket system calls
of a proxied request cost in this interpreter on this machine (benchmarks/floors.py).
With BUSY_US it also spins that many microseconds of pure Python per request: how
much a request's other costs grow as the proxy's own work does.
"""

import asyncio
import sys
import time

import httptools
import uvloop

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.done is not None:
            self.done.set_result(None)


class Client(asyncio.Protocol):
    """The server side: requests parsed by llhttp, answered in order by :meth:`serve`.

    floors/pool_proxy.py keeps this side and replaces ``serve``.
    """

    upstream_port = 0
    busy = 0.0  # seconds of pure Python spun per request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = asyncio.Queue()
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.task = asyncio.ensure_future(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.queue.put_nowait((self.parser.get_method(), self.url, self.headers))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(Upstream, "127.0.0.1", self.upstream_port)
        while True:
            method, url, headers = await self.queue.get()
            head = [method, b" ", url, b" HTTP/1.1\r\n"]
            for name, value in headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"\r\n")
            if self.busy:
                spin(self.busy)
            up.done = loop.create_future()
            up.transport.write(b"".join(head))
            await up.done
            body = b"".join(up.body)
            out = [b"HTTP/1.1 %d OK\r\n" % up.status]
            for name, value in up.headers:
                if name.lower() not in _HOP:
                    out += [name, b": ", value, b"\r\n"]
            out += [b"Content-Length: %d\r\n\r\n" % len(body), body]
            self.transport.write(b"".join(out))


def spin(seconds: float) -> None:
    """Work that is only CPU: no allocation, no system call."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(client: type[Client], port: int) -> None:
    """Serve ``client`` on 127.0.0.1:``port`` until killed."""

    async def main() -> None:
        await asyncio.get_running_loop().create_server(client, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


if __name__ == "__main__":
    Client.upstream_port = int(sys.argv[2])
    Client.busy = float(sys.argv[3]) / 1e6 if len(sys.argv) > 3 else 0.0
    run(Client, int(sys.argv[1]))
