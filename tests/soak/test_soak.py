"""A bounded load soak: steady mixed traffic against a gateway process in front of a demo CRM process.

150 operations a second (``--soak-seconds`` / ``CRMGW_SOAK_SECONDS``, 30 s by
default, after a short warm-up): logged-in pages, anonymous pages, denials from
outside and of blocked functions, streaming downloads and uploads, WebSocket
round trips, whole login-browse-logout cycles and the mobile app from outside.
It holds when:

- every answer is the one the policy gives (no 5xx, no broken connection);
- the gateway does not leak: resident memory and open descriptors over the last
  third of the run are flat against the first third;
- every denial is logged exactly once: ``access.denied`` events counted by
  request id match the X-Request-ID of the 403s received, one for one.

The figures are printed and kept in ``test-artifacts/soak/summary.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import HOME, OFFICE, POLICY, GatewayProcess, free_port, main_config, open_fds, write_config

RATE = 150.0  # operations per second; a few are several requests (a login cycle is three)
WARM_UP = 3.0
SAMPLE_EVERY = 0.5
MiB = 1024 * 1024
DOWNLOAD = 512 * 1024
UPLOAD = 128 * 1024
MOBILE_UA = "AcmeCRM-Mobile/5.2 (Android 14)"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "soak"
# Flatness: the last third against the first third of the measured run.
RSS_TOLERANCE = 4 * MiB
FD_TOLERANCE = 2  # descriptors other than live connections


@dataclass(frozen=True)
class Census:
    """A gateway's open descriptors, told apart.

    Connections from clients come and go with the clients' pools, connections to the CRM with
    the upstream pool; everything else, and any socket whose peer has closed it (CLOSE_WAIT),
    is where a leak shows.
    """

    total: int
    clients: int
    upstream: int
    close_wait: int

    @property
    def other(self) -> int:
        return self.total - self.clients - self.upstream

    @classmethod
    def of(cls, pid: int, listen_port: int, upstream_port: int) -> Census:
        sockets = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
        clients = upstream = close_wait = 0
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as lines:
                for line in list(lines)[1:]:
                    fields = line.split()
                    if fields[9] not in sockets:
                        continue
                    local, remote, state = (int(fields[1].rsplit(":", 1)[1], 16),
                                            int(fields[2].rsplit(":", 1)[1], 16), fields[3])
                    close_wait += state == "08"
                    if state == "01" and local == listen_port:
                        clients += 1
                    elif state == "01" and remote == upstream_port:
                        upstream += 1
        return cls(total=open_fds(pid), clients=clients, upstream=upstream, close_wait=close_wait)


@dataclass
class Tally:
    """What the clients saw, by kind of operation."""

    requests: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    denied_ids: Counter[str] = field(default_factory=Counter)

    def saw(self, kind: str, resp: aiohttp.ClientResponse, expected: int) -> None:
        self.requests += 1
        self.statuses[(kind, resp.status)] += 1
        if resp.status == 403:
            self.denied_ids[resp.headers.get("X-Request-ID", "<none>")] += 1
        if resp.status != expected and len(self.unexpected) < 20:
            self.unexpected.append(f"{kind}: {resp.status} (expected {expected}) {resp.url.path}")

    def server_errors(self) -> int:
        return sum(n for (_kind, status), n in self.statuses.items() if status >= 500)


class Traffic:
    """The clients and the operations they perform; each operation records what it saw."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.url = url
        self.tally = tally
        self.clients: list[aiohttp.ClientSession] = []
        self.office = self.client(OFFICE, limit=24)
        self.outside = self.client(HOME, limit=12)
        self.users: dict[str, aiohttp.ClientSession] = {}
        self.rng = random.Random(20261122)

    def client(self, source: str, *, jar: bool = False, limit: int = 4, **kwargs: Any) -> aiohttp.ClientSession:
        """A client from ``source`` with at most ``limit`` connections: browsers and apps hold a few each,
        and a bounded pool keeps the gateway's count of client connections steady, so that a growing
        count of descriptors means a leak rather than a client opening more."""
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=limit),
            cookie_jar=aiohttp.CookieJar(unsafe=True) if jar else aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=20), **kwargs,
        )
        self.clients.append(session)
        return session

    async def close(self) -> None:
        for session in self.clients:
            await session.close()

    async def log_in(self, session: aiohttp.ClientSession, user: str, *, as_json: bool = False) -> None:
        login: dict[str, Any] = {"json": {"username": user, "password": "demo"}} if as_json else {
            "data": {"username": user, "password": "demo"}}
        async with session.post(f"{self.url}/login", allow_redirects=False, **login) as resp:
            await resp.read()
            self.tally.saw("login", resp, 303 if as_json else 302)

    async def start(self) -> None:
        for user in ("jim", "bob", "alice", "maria", "sam", "pat"):
            self.users[user] = self.client(OFFICE, jar=True)
            await self.log_in(self.users[user], user)
        self.mobile = self.client(HOME, jar=True, headers={"User-Agent": MOBILE_UA})
        await self.log_in(self.mobile, "bob", as_json=True)

    async def get(self, session: aiohttp.ClientSession, kind: str, path: str, expected: int) -> bytes:
        async with session.get(f"{self.url}{path}", allow_redirects=False) as resp:
            body = await resp.read()
            self.tally.saw(kind, resp, expected)
            return body

    async def page(self) -> None:
        user = self.rng.choice(["jim", "bob", "alice", "maria", "sam"])
        path = self.rng.choice(["/dashboard", "/projects", "/contacts", "/timeclock"])
        body = await self.get(self.users[user], "page", path, 200)
        assert f"Logged in as {user}".encode() in body, f"{user} saw someone else's page"

    async def anonymous(self) -> None:
        await self.get(self.office, "anonymous", "/echo/soak", 200)

    async def denied_outside(self) -> None:
        await self.get(self.outside, "denied_outside", self.rng.choice(["/dashboard", "/echo/x"]), 403)

    async def denied_function(self) -> None:
        await self.get(self.users["pat"], "denied_function", "/billing", 403)

    async def download(self) -> None:
        body = await self.get(self.office, "download", f"/download/large?size={DOWNLOAD}", 200)
        assert len(body) == DOWNLOAD

    async def upload(self) -> None:
        async with self.office.post(f"{self.url}/upload", data=b"u" * UPLOAD) as resp:
            result = await resp.json()
            self.tally.saw("upload", resp, 200)
            assert result["bytes"] == UPLOAD

    async def websocket(self) -> None:
        user = self.rng.choice(["jim", "bob", "alice"])
        async with self.users[user].ws_connect(f"{self.url}/ws/notifications") as ws:
            self.tally.requests += 1
            self.tally.statuses[("websocket", 101)] += 1
            assert await ws.receive_str(timeout=10) == f"hello {user}"
            await ws.send_str("round trip")
            assert await ws.receive_str(timeout=10) == "round trip"

    async def login_cycle(self) -> None:
        session = self.client(OFFICE, jar=True)
        try:
            user = self.rng.choice(["jim", "bob", "maria", "sam"])
            await self.log_in(session, user)
            await self.get(session, "login_cycle", "/dashboard", 200)
            await self.get(session, "logout", "/logout", 302)
        finally:
            await session.close()
            self.clients.remove(session)

    async def mobile_app(self) -> None:
        if self.rng.random() < 0.7:
            await self.get(self.mobile, "mobile", "/api/mobile/me", 200)
        else:
            await self.get(self.mobile, "mobile_export", "/api/mobile/contacts/export", 403)

    async def whoami(self) -> None:
        await self.get(self.outside, "whoami", "/_gateway/whoami", 200)

    async def health(self) -> None:
        await self.get(self.office, "health", "/_gateway/health", 200)

    def schedule(self) -> list[Callable[[], Awaitable[None]]]:
        """One cycle of 100 operations in the soak's proportions, shuffled."""
        weights = {
            self.page: 30, self.anonymous: 8, self.denied_outside: 15, self.denied_function: 5,
            self.download: 8, self.upload: 4, self.websocket: 5, self.login_cycle: 6, self.mobile_app: 9,
            self.whoami: 5, self.health: 5,
        }
        cycle = [op for op, weight in weights.items() for _ in range(weight)]
        self.rng.shuffle(cycle)
        return cycle


async def run_at_rate(traffic: Traffic, seconds: float, on_tick: Callable[[], None] | None = None) -> int:
    """Start operations at RATE for ``seconds`` (open loop: a slow answer does not slow the schedule)."""
    cycle = traffic.schedule()
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: list[asyncio.Task[None]] = []
    total = int(seconds * RATE)

    async def guarded(op: Callable[[], Awaitable[None]]) -> None:
        try:
            await op()
        except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
            traffic.tally.errors[f"{op.__name__}: {type(exc).__name__}: {exc}"[:160]] += 1

    for index in range(total):
        delay = started + index / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(guarded(cycle[index % len(cycle)])))
        if on_tick is not None:
            on_tick()
    await asyncio.gather(*tasks)
    return total


@pytest.mark.slow
async def test_soak_mixed_traffic_no_errors_no_leaks_every_denial_logged_once(
    tmp_path: Path, crm_port: int, soak_seconds: float
) -> None:
    port = free_port()
    main = main_config(crm_port, listen={"host": "127.0.0.1", "port": port},
                       upstream={"url": f"http://127.0.0.1:{crm_port}", "connect_timeout": 2, "read_timeout": 10})
    gw = GatewayProcess(write_config(tmp_path, main, POLICY))
    gw.start(port)
    assert gw.proc is not None
    pid = gw.proc.pid
    tally = Tally()
    traffic = Traffic(f"http://127.0.0.1:{port}", tally)
    samples: list[tuple[float, int, Census]] = []

    def census() -> Census:
        return Census.of(pid, port, crm_port)

    try:
        await traffic.start()
        await run_at_rate(traffic, WARM_UP)
        last_sample = 0.0

        def sample() -> None:
            nonlocal last_sample
            now = time.monotonic()
            if now - last_sample >= SAMPLE_EVERY:
                last_sample = now
                samples.append((now, gw.rss_bytes(), census()))

        started = time.monotonic()
        operations = await run_at_rate(traffic, soak_seconds, on_tick=sample)
        elapsed = time.monotonic() - started
        await traffic.close()
        # The clients are gone: so are their connections, and nothing is left half-closed.
        after = census()
        deadline = time.monotonic() + 5
        while (after.clients or after.close_wait) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            after = census()
    finally:
        await traffic.close()
        code = gw.stop()
    assert code == 0

    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    rss_first, rss_last = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    fds_first, fds_last = statistics.median(s[2].total for s in first), statistics.median(s[2].total for s in last)
    other_first, other_last = (statistics.median(s[2].other for s in first),
                               statistics.median(s[2].other for s in last))
    events = gw.events("access.denied")
    logged = Counter(e.get("request_id") for e in events)
    summary = {
        "seconds": round(elapsed, 1),
        "operations": operations,
        "requests": tally.requests,
        "rate_requests_per_s": round(tally.requests / (elapsed + WARM_UP), 1),
        "statuses": {f"{kind} {status}": n for (kind, status), n in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "denials_received": sum(tally.denied_ids.values()),
        "denials_logged": len(events),
        "rss_mib_first_third": round(rss_first / MiB, 1),
        "rss_mib_last_third": round(rss_last / MiB, 1),
        "rss_mib_max": round(max(s[1] for s in samples) / MiB, 1),
        "fds_first_third": fds_first,
        "fds_last_third": fds_last,
        "fds_max": max(s[2].total for s in samples),
        "fds_not_live_connections_first_third": other_first,
        "fds_not_live_connections_last_third": other_last,
        "close_wait_max": max(s[2].close_wait for s in samples),
        "client_connections_max": max(s[2].clients for s in samples),
        "upstream_pool_max": max(s[2].upstream for s in samples),
        "after_clients_left": {"fds": after.total, "client_connections": after.clients,
                               "upstream_pool": after.upstream, "close_wait": after.close_wait,
                               "other": after.other},
        "samples": len(samples),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nsoak:", json.dumps(summary))

    assert not tally.errors, f"operations failed: {dict(tally.errors)}"
    assert tally.server_errors() == 0, summary["statuses"]
    assert not tally.unexpected, tally.unexpected
    assert elapsed < soak_seconds * 1.1 + 5, f"the gateway fell behind: {elapsed:.1f}s for {soak_seconds}s of load"
    assert rss_last - rss_first <= RSS_TOLERANCE, f"RSS grew {(rss_last - rss_first) / MiB:.1f} MiB: {summary}"
    assert other_last - other_first <= FD_TOLERANCE, f"descriptors grew {other_last - other_first}: {summary}"
    assert (after.clients, after.close_wait) == (0, 0), f"connections the clients closed are still open: {summary}"
    assert after.other <= other_first + FD_TOLERANCE, summary
    # Every denial logged exactly once, and nothing logged as denied that was not answered 403.
    assert all(n == 1 for n in tally.denied_ids.values()), "a request id on two 403s"
    assert "<none>" not in tally.denied_ids, "a 403 without X-Request-ID"
    duplicates = {rid: n for rid, n in logged.items() if n != 1}
    assert not duplicates, f"denials logged more than once: {duplicates}"
    assert set(logged) == set(tally.denied_ids), (
        f"403s without a log event: {len(set(tally.denied_ids) - set(logged))}, "
        f"events without a 403: {len(set(logged) - set(tally.denied_ids))}"
    )
