"""Open-loop load at a fixed rate; latency counted from each request's *scheduled* send time.

``python benchmarks/openloop.py --port P [--path /health] [--rate 500] [--duration 10] [-H 'Cookie: ...']``
prints one JSON object. Request i is due at ``start + i/rate`` whatever happened to
earlier ones: it goes out on an idle keep-alive connection, or a new one (up to
``--connections``), or waits for one; all of that waiting is counted. So a proxy
that stalls for 100 ms is charged 100 ms for every request due in that time, not
just the one it was serving (no coordinated omission, as with wrk2).

The event loop uses ``select()`` rather than epoll: epoll timeouts are rounded up
to whole milliseconds, which would add up to 1 ms of the generator's own lateness
to every latency; ``select()`` sleeps to the microsecond. How late the generator
itself was (send time minus scheduled time) is reported as ``lateness_ms`` so a
reader can see when it, rather than the proxy, fell behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import signal
import sys
import time
from collections import Counter, deque
from typing import Any

TIMEOUT = 10.0


class ProtocolError(Exception):
    pass


def parse_response(buf: bytearray) -> tuple[int, int] | None:
    """(status, bytes consumed) once a whole response is in ``buf``; None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ProtocolError(head[0]) from None
    length, chunked = None, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        need = pos + (length or 0)
        return (status, need) if len(buf) >= need else None
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            if buf[pos:pos + 2] == b"\r\n":
                return status, pos + 2
            trailer_end = buf.find(b"\r\n\r\n", pos)
            return (status, trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf.extend(data)
        if self.waiter is None or self.waiter.done():
            return
        try:
            parsed = parse_response(self.buf)
        except (ProtocolError, ValueError) as exc:
            self.waiter.set_exception(ProtocolError(str(exc)))
            return
        if parsed is not None:
            status, consumed = parsed
            del self.buf[:consumed]
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed by peer"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        """Write the request now; the future is the response status."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.sent_at = loop.time()
        self.transport.write(data)
        return self.waiter


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    out: dict[str, float | None] = {f"p{p:g}": percentile(ordered, p) for p in (50, 90, 99, 99.9)}
    out["max"] = ordered[-1] if ordered else None
    out["mean"] = sum(ordered) / len(ordered) if ordered else None
    return out


class Generator:
    def __init__(self, host: str, port: int, request: bytes, max_connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_connections = max_connections
        self.idle: deque[Connection] = deque()
        self.waiting: deque[asyncio.Future[Connection | None]] = deque()
        self.open = 0
        self.opened = 0
        self.stopping = False  # SIGTERM: send nothing more, finish what is in flight, report

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, self.host, self.port)
        self.opened += 1
        return conn

    async def acquire(self) -> Connection:
        """An idle connection, a new one while under the limit, else the next one released."""
        while True:
            idle = self.try_idle()
            if idle is not None:
                return idle
            if self.open < self.max_connections:
                self.open += 1
                try:
                    return await self._connect()
                except OSError:
                    self.open -= 1
                    raise
            future: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            conn_or_slot = await future
            if conn_or_slot is not None:
                return conn_or_slot
            # None: a connection was dropped, so there is room to open one: try again.

    def _wake(self, value: Connection | None) -> bool:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(value)
                return True
        return False

    def release(self, conn: Connection, healthy: bool) -> None:
        if not healthy or conn.closed:
            if conn.transport is not None:
                conn.transport.close()
            self.open -= 1
            self._wake(None)
        elif not self._wake(conn):
            self.idle.append(conn)

    def try_idle(self) -> Connection | None:
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                return conn
            self.open -= 1
        return None

    async def one(self, due: float, record: list[tuple[float, float, float, str]], start: float,
                  conn: Connection | None = None, waiter: asyncio.Future[int] | None = None) -> None:
        """Send (unless the scheduler already did on ``conn``), await the answer, record it."""
        loop = asyncio.get_running_loop()
        outcome = "error"
        sent = due
        try:
            async with asyncio.timeout(TIMEOUT):
                if conn is None:
                    conn = await self.acquire()
                    sent = loop.time()
                    waiter = conn.send(self.request)
                else:
                    sent = conn.sent_at
                healthy = False
                try:
                    assert waiter is not None
                    status = await waiter
                    healthy = True
                    outcome = str(status)
                finally:
                    self.release(conn, healthy)
        except TimeoutError:
            outcome = "timeout"
        except (OSError, ProtocolError) as exc:
            outcome = type(exc).__name__
        done = loop.time()
        record.append((due - start, done - due, sent - due, outcome))

    async def run(self, rate: float, duration: float, warmup: float, preopen: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for _ in range(min(preopen, self.max_connections)):
            self.open += 1
            self.idle.append(await self._connect())
        if warmup > 0:
            await self._phase(rate, warmup, [])
        record: list[tuple[float, float, float, str]] = []
        started = loop.time()
        zero_wall = await self._phase(rate, duration, record)
        elapsed = loop.time() - started
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        result = report(record, rate, duration, elapsed, self.opened)
        result["started_at"] = zero_wall  # wall-clock time of the timeline's zero, to match log events
        return result

    async def _phase(self, rate: float, duration: float, record: list[tuple[float, float, float, str]]) -> float:
        """Requests due every 1/rate s from 50 ms from now; returns the wall-clock time of the first one."""
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        zero_wall = time.time() + 0.05
        count = int(rate * duration)
        tasks = set()
        for i in range(count):
            due = start + i / rate
            if self.stopping:
                break
            delay = due - loop.time()
            await asyncio.sleep(max(delay, 0.0))  # behind schedule: still let responses in between sends
            # Fast path: an idle connection gets the request written right now, not on the next loop turn.
            conn = self.try_idle()
            waiter = conn.send(self.request) if conn is not None else None
            task = asyncio.ensure_future(self.one(due, record, start, conn, waiter))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        return zero_wall


def report(record: list[tuple[float, float, float, str]], rate: float, duration: float, elapsed: float,
           opened: int) -> dict[str, Any]:
    outcomes = Counter(r[3] for r in record)
    ok = [r for r in record if r[3].isdigit() and 200 <= int(r[3]) < 300]
    return {
        "rate": rate,
        "duration": duration,
        "elapsed": elapsed,
        "requests": len(record),
        "ok": len(ok),
        "failed": len(record) - len(ok),
        "outcomes": dict(outcomes),
        "connections_opened": opened,
        # Latency of every request, failed ones included, from its scheduled send time.
        "latency_ms": {k: (v * 1000 if v is not None else None) for k, v in summary([r[1] for r in record]).items()},
        # From the actual write (what a closed-loop tool would report): for comparison only.
        "service_ms": {k: (v * 1000 if v is not None else None)
                       for k, v in summary([r[1] - r[2] for r in record]).items()},
        "lateness_ms": {k: (v * 1000 if v is not None else None) for k, v in summary([r[2] for r in record]).items()},
        "timeline": [[round(r[0], 6), round(r[1] * 1000, 3), r[3]] for r in sorted(record)],
    }


def build_request(host: str, port: int, path: str, headers: list[str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: openloop-bench"]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def tighten_timer_slack() -> None:
    """Ask the kernel to wake us on time (default timer slack is 50 us per sleep)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (SIGTERM ends it early)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the same rate, not measured")
    parser.add_argument("--connections", type=int, default=256, help="most connections open at once")
    parser.add_argument("--preopen", type=int, default=8, help="connections opened before the start")
    parser.add_argument("-H", "--header", action="append", default=[], help="extra request header")
    parser.add_argument("--timeline", action="store_true", help="include every request in the output")
    args = parser.parse_args(argv)
    tighten_timer_slack()
    request = build_request(args.host, args.port, args.path, args.header)
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    generator = Generator(args.host, args.port, request, args.connections)
    loop.add_signal_handler(signal.SIGTERM, lambda: setattr(generator, "stopping", True))
    try:
        result = loop.run_until_complete(generator.run(args.rate, args.duration, args.warmup, args.preopen))
    finally:
        loop.close()
    if not args.timeline:
        result.pop("timeline")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
