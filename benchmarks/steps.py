"""What each step of a request costs the gateway, timed in-process (no sockets).

    python benchmarks/steps.py

Loads the benchmark config (example policy + 1,000 generated rules), builds the
gateway's chain and times, on one request like the benchmark's (jim's session
cookie, GET /health from 127.0.0.1), each filter and the pieces of the proxy
and the decision the filters call: best of 5 repeats, µs per call. The request
object is aiohttp's own, made by its test helper with a stand-in transport; its
cached properties make the figures a little low. Real runs cost about twice the
sum (benchmarks/floors.py, docs/performance.md): these say where, not how much.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchconfig
import uvloop
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from run import RULES

from gateway import logs
from gateway.app import Gateway
from gateway.chain import new_request_id
from gateway.client_ip import parse_peer
from gateway.config import load_config
from gateway.exchange import Exchange
from gateway.filters.identity import crm_cookies
from gateway.filters.policy import facts_of, override_methods
from gateway.metrics import UPSTREAM_LATENCY, record_request
from gateway.proxy import _SMALL_BODY_SKIP, Proxy, end_to_end

REPEAT = 5
FILLED_IN = ("path", "query", "scheme", "forwarded_host", "session", "user", "decision", "channel")


def show(label: str, us: float) -> None:
    print(f"{label:44} {us:6.2f} µs")


def timed(label: str, call: Callable[[], Any], number: int = 50_000) -> None:
    show(label, min(timeit.repeat(call, number=number, repeat=REPEAT)) / number * 1e6)


async def timed_async(label: str, make: Callable[[], Callable[[], Awaitable[Any]]], number: int = 10_000) -> None:
    best = float("inf")
    for _ in range(REPEAT):
        calls = [make() for _ in range(number)]  # fresh state per call, made outside the clock
        started = time.perf_counter()
        for call in calls:
            await call()
        best = min(best, (time.perf_counter() - started) / number * 1e6)
    show(label, best)


async def main(config_path: Path, cookie: str) -> None:
    logs.configure(level="warning")
    config = load_config(config_path)
    gateway = Gateway(config)
    resources = gateway._resources_ctx(gateway.app)
    await resources.__anext__()
    transport = mock.Mock()
    peername = ("127.0.0.1", 5555)
    transport.get_extra_info.side_effect = lambda key, default=None: peername if key == "peername" else default
    request = make_mocked_request("GET", "/health", transport=transport, app=gateway.app,
                                  headers={"Host": "127.0.0.1:8080", "User-Agent": "wrk", "Cookie": cookie})
    peer = parse_peer("127.0.0.1")
    assert gateway.chain is not None and isinstance(gateway.chain.terminal, Proxy)
    filters, proxy = gateway.chain.filters, gateway.chain.terminal

    def exchange() -> Exchange:
        return Exchange(request=request, request_id="0", peer_ip=peer, client_ip=peer)

    # The exchange as each filter finds it: what the filters before it filled in.
    states: list[dict[str, Any]] = []
    done = exchange()
    for step in filters:
        states.append({name: getattr(done, name) for name in FILLED_IN})
        assert await step(done) is None, f"{type(step).__name__} answered the benchmark request"
    assert done.decision is not None and done.decision.action == "allow"

    print("the chain, per filter:")
    for step, state in zip(filters, states, strict=True):
        def make(step: Any = step, state: dict[str, Any] = state) -> Callable[[], Awaitable[Any]]:
            ex = exchange()
            for name, value in state.items():
                setattr(ex, name, value)
            return lambda: step(ex)
        await timed_async(f"  {type(step).__name__}", make)

    print("inside the identity and policy filters:")
    store = gateway.sessions
    assert store is not None
    await timed_async("  SessionStore.load", lambda: lambda: store.load(request))
    timed("  crm_cookies", lambda: crm_cookies(request.headers.getall("Cookie", ()), "crm_session"))
    timed("  facts_of", lambda: facts_of(done, user=done.user))
    facts = facts_of(done, user=done.user)
    timed("  Policy.decide", lambda: config.policy.decide(facts))
    timed("  override_methods", lambda: override_methods(done))

    print("the plumbing:")
    timed("  new_request_id", new_request_id)
    timed("  Exchange()", exchange)
    timed("  Proxy.upstream_header_pairs", lambda: proxy.upstream_header_pairs(done))
    upstream_headers = CIMultiDictProxy(CIMultiDict([
        ("Server", "nginx/1.22.1"), ("Date", "Sun, 22 Nov 2026 17:00:00 GMT"), ("Content-Type", "text/plain"),
        ("Content-Length", "3"), ("Connection", "keep-alive")]))
    timed("  end_to_end (a response's headers)", lambda: end_to_end(upstream_headers, _SMALL_BODY_SKIP))
    pairs = [*end_to_end(upstream_headers, _SMALL_BODY_SKIP), ("X-Request-ID", "0")]
    timed("  web.Response (small body)", lambda: web.Response(status=200, reason="OK", body=b"ok\n", headers=pairs))
    timed("  UPSTREAM_LATENCY.observe", lambda: UPSTREAM_LATENCY.observe(0.0004))
    timed("  record_request", lambda: record_request(done, 200))
    with contextlib.suppress(StopAsyncIteration):
        await resources.__anext__()  # the pool, the client, the store: closed


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help, and nothing else
    with tempfile.TemporaryDirectory(prefix="crmgw-steps-") as tmp:
        path = benchconfig.write_config(Path(tmp), port=1, upstream_port=2, rules=RULES)
        uvloop.run(main(path, benchconfig.minted_cookie(path)))
