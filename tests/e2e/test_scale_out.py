"""Several gateway processes sharing state in a real Redis, and ``serve --workers N`` (issue 7)."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
import redis
import yaml
from yarl import URL

from gateway.totp import SecretStore
from tests.e2e.harness import POLICY, GatewayProcess, free_port, main_config, write_config
from tests.support.redis_server import RedisServer

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def two_fa_policy() -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["defaults"]["require_2fa"] = True
    return policy


def start_replicas(tmp_path: Path, crm: int, redis_url: str, count: int = 2,
                   users: tuple[str, ...] = ("jim",)) -> list[GatewayProcess]:
    for user in users:
        SecretStore(tmp_path / "totp-secrets.yaml").set(user, SECRET)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    replicas = []
    for index in range(count):
        port = free_port()
        directory = tmp_path / f"replica{index}"
        main = main_config(
            crm,
            listen={"host": "127.0.0.1", "port": port},
            session={"store": "redis", "redis_url": redis_url, "cookie_secure": False},
            totp={"secrets_file": str(tmp_path / "totp-secrets.yaml"), "max_failures": 4},
        )
        path = write_config(directory, main, two_fa_policy())
        replica = GatewayProcess(path, env={"CRMGW_SECRET_KEY": key})
        replica.start(port)
        replicas.append(replica)
    return replicas


def url(replica: GatewayProcess, path: str) -> str:
    return f"http://127.0.0.1:{replica.port}{path}"


async def login(client: aiohttp.ClientSession, replica: GatewayProcess, user: str = "jim") -> None:
    async with client.post(url(replica, "/login"), data={"username": user, "password": "demo"},
                           allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()


def cookies_for(client: aiohttp.ClientSession, replica: GatewayProcess) -> str:
    jar = client.cookie_jar.filter_cookies(URL(url(replica, "/")))
    return "; ".join(f"{k}={v.value}" for k, v in jar.items())


async def test_replicas_share_sessions_codes_and_failure_counters_through_redis(
    tmp_path: Path, crm_port: int, redis_server: RedisServer
) -> None:
    a, b = start_replicas(tmp_path, crm_port, redis_server.url)
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            # Log in through A; the pending 2FA session is visible on B.
            await login(client, a)
            cookie = cookies_for(client, a)
            async with client.get(url(b, "/_gateway/whoami"), headers={"Cookie": cookie}) as resp:
                assert (await resp.json())["user"] == "jim"
            # Complete 2FA on B with a code...
            code = pyotp.TOTP(SECRET).now()
            async with client.post(url(b, "/_gateway/2fa"), json={"code": code},
                                   headers={"Cookie": cookie}) as resp:
                assert resp.status == 200
        # ...and that code, replayed on A in a new login, is rejected.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
            await login(other, a)
            async with other.post(url(a, "/_gateway/2fa"), json={"code": code}) as resp:
                assert resp.status == 401
            # Failures spread across both replicas add up to one lock-out (max_failures 4, one used above).
            statuses = []
            for replica in (b, a, b, a):
                cookie = cookies_for(other, a)
                async with other.post(url(replica, "/_gateway/2fa"), json={"code": "000000"},
                                      headers={"Cookie": cookie}) as resp:
                    statuses.append(resp.status)
            assert statuses[:2] == [401, 401] and statuses[2] == 429 and statuses[3] == 429, statuses
    finally:
        a.stop()
        b.stop()


def redis_commands(server: RedisServer) -> Counter[str]:
    """Commands the server has run so far, by name (INFO commandstats: a script's own calls count too)."""
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()})


async def test_a_session_costs_one_redis_round_trip_then_none_and_a_logout_ends_copies_on_every_replica(
    tmp_path: Path, crm_port: int, redis_server: RedisServer
) -> None:
    """The session and its revocation flag are read together (each was a Redis command of its own, ~40 us
    of the gateway's CPU apiece), then kept while Redis reports their changes (gateway.session_cache): a
    logout on one replica must still end the copy on the other at once, for the very next request."""
    users = ("jim", "bob", "pat")  # a code is good once per user: each round needs its own
    a, b = start_replicas(tmp_path, crm_port, redis_server.url, users=users)
    try:
        for user in users:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
                await login(client, a, user)
                async with client.post(url(b, "/_gateway/2fa"), json={"code": pyotp.TOTP(SECRET).now()},
                                       headers={"Cookie": cookies_for(client, a)}) as resp:
                    assert resp.status == 200
                cookie = cookies_for(client, a)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as copy_of_it:
                sent = []
                for _ in range(3):
                    before = redis_commands(redis_server)
                    async with copy_of_it.get(url(b, "/dashboard"), headers={"Cookie": cookie},
                                              allow_redirects=False) as resp:
                        assert resp.status == 200
                    # the gateway's: all but this test's own HELLO and INFO, and the session caches'
                    # heartbeats (a PING every 0.1 s per process, whatever the requests)
                    commands = redis_commands(redis_server) - before - Counter(hello=1, info=1)
                    del commands["ping"]
                    sent.append(commands)
                # the first reads session and flag with one script (loading it first, in the first round)
                assert sent[0]["evalsha"] == 1 and sent[0]["get"] == sent[0]["pttl"] == 1, sent
                assert sent[0].total() - sent[0]["script|load"] - 2 == 1, sent
                assert sent[1].total() == sent[2].total() == 0, sent  # the next ones none
                async with copy_of_it.get(url(a, "/logout"), headers={"Cookie": cookie}, allow_redirects=False):
                    pass
                async with copy_of_it.get(url(b, "/_gateway/whoami"), headers={"Cookie": cookie}) as resp:
                    assert (await resp.json())["user"] is None  # the copy ended too, on the other replica
                async with copy_of_it.get(url(b, "/dashboard"), headers={"Cookie": cookie},
                                          allow_redirects=False) as resp:
                    assert resp.status in (302, 303), resp.status
        assert len(b.events("session.cache_on")) == 1
    finally:
        a.stop()
        b.stop()


async def test_redis_outage_fails_closed_and_recovers(
    tmp_path: Path, crm_port: int, redis_server: RedisServer
) -> None:
    (gw,) = start_replicas(tmp_path, crm_port, redis_server.url, count=1)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            await login(client, gw)
            redis_server.stop()
            async with client.get(url(gw, "/dashboard"), allow_redirects=False) as resp:
                assert resp.status == 503
                assert "session store" in (await resp.text())
            async with client.get(url(gw, "/dashboard"), headers={"Accept": "application/json"}) as resp:
                assert (await resp.json())["reason"] == "session_store_unavailable"
            async with client.get(url(gw, "/login")) as resp:  # public: still served
                assert resp.status == 200
            async with client.get(url(gw, "/_gateway/health")) as resp:
                assert resp.status == 200
            async with client.get(url(gw, "/_gateway/ready")) as resp:
                assert resp.status == 503
            assert gw.events("session.store_unavailable")
            redis_server.start()
            deadline = time.monotonic() + 10
            while True:
                async with client.get(url(gw, "/_gateway/ready")) as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, "never became ready again"
                await asyncio.sleep(0.2)
            async with client.get(url(gw, "/_gateway/2fa")) as resp:
                assert resp.status == 200  # the pending login survived the outage
    finally:
        gw.stop()


async def test_workers_share_a_port_reload_together_and_drain(
    tmp_path: Path, crm_port: int, redis_server: RedisServer
) -> None:
    port = free_port()
    main = main_config(crm_port, listen={"host": "127.0.0.1", "port": port},
                       session={"store": "redis", "redis_url": redis_server.url})
    path = write_config(tmp_path, main, POLICY)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    gw = GatewayProcess(path, extra_args=("--workers", "2"), env={"TMPDIR": str(scratch)})
    gw.start(port)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2 and time.monotonic() < deadline:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
                async with client.get(f"http://127.0.0.1:{port}/_gateway/health") as resp:
                    pids.add((await resp.json())["pid"])
        assert len(pids) == 2, "both workers should answer"

        blocked = copy.deepcopy(POLICY)
        blocked["functions"]["projects"] = {"paths": ["/projects"]}
        blocked["rules"].append({"title": "Projects frozen", "action": "block", "function": "projects"})
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(blocked))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        # Each worker reloads on the signal and may also on the file change: wait for both workers.
        while {e["worker"] for e in gw.events("config.reloaded")} != {0, 1} and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert {e["worker"] for e in gw.events("config.reloaded")} == {0, 1}, gw.log_text()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            for _ in range(20):
                async with client.get(f"http://127.0.0.1:{port}/projects", allow_redirects=False) as resp:
                    assert resp.status == 403
            # Metrics add up across the workers, whichever answers the scrape.
            for _ in range(4):
                async with client.get(f"http://127.0.0.1:{port}/_gateway/metrics") as resp:
                    text = await resp.text()
                denied = [line for line in text.splitlines()
                          if line.startswith('crmgw_requests_total{decision="deny",reason="function_blocked"}')]
                assert denied and float(denied[0].split()[-1]) == 20.0, denied

            slow = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/slow?seconds=2"))
            await asyncio.sleep(0.5)
            gw.signal(signal.SIGTERM)
            resp = await slow
            assert resp.status in (200, 302)  # completed, not cut
            resp.release()
        assert gw.proc is not None
        assert await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 15) == 0
        assert list(scratch.iterdir()) == []  # the workers' metric files went with the parent
    finally:
        gw.stop()


async def test_a_reload_cannot_give_the_cookie_stores_workers_a_login_to_count_alone(
    tmp_path: Path, crm_port: int
) -> None:
    """Several workers with the cookie store are refused at start only when there is a login section:
    adding one by a reload would have each worker count failures, bans and codes on its own."""
    port = free_port()
    main = main_config(crm_port, listen={"host": "127.0.0.1", "port": port}, login=None)
    path = write_config(tmp_path, main, POLICY)
    gw = GatewayProcess(path, extra_args=("--workers", "2"))
    gw.start(port)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers serve (and handle SIGHUP)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
                async with client.get(f"http://127.0.0.1:{port}/_gateway/health") as resp:
                    pids.add((await resp.json())["pid"])
        main["login"] = main_config(crm_port)["login"]
        path.write_text(yaml.safe_dump(main, sort_keys=False))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(gw.events("config.reload_failed")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        failed = gw.events("config.reload_failed")
        assert {e["worker"] for e in failed} == {0, 1}, gw.log_text()
        assert all("session.store is 'cookie' with 2 workers" in e["errors"][0] for e in failed)
        assert not gw.events("config.reloaded")
    finally:
        gw.stop()


async def ask_whoami_until(stop: asyncio.Event, client: aiohttp.ClientSession, replica: GatewayProcess,
                          cookie: str, ended: list[float]) -> list[float]:
    """Ask ``whoami`` again and again; how long after ``ended[0]`` each request that still saw the user began."""
    late = []
    while not stop.is_set():
        started = time.monotonic()
        async with client.get(url(replica, "/_gateway/whoami"), headers={"Cookie": cookie}) as resp:
            user = (await resp.json())["user"]
        if ended and started > ended[0] and user is not None:
            late.append(started - ended[0])
    return late


async def test_a_logout_on_one_replica_reaches_every_later_request_on_another_under_load(
    tmp_path: Path, crm_port: int, redis_server: RedisServer
) -> None:
    """Replica B serves the session from its copy to eight clients at once while A logs it out: no request
    B starts after A answered the logout may see the user (review 18; the copies are gateway.session_cache's)."""
    a, b = start_replicas(tmp_path, crm_port, redis_server.url)
    try:
        deadline = time.monotonic() + 10
        while not b.events("session.cache_on"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for _ in range(8):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
                await login(client, a)
                cookie = cookies_for(client, a)
            ended: list[float] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as other:
                tasks = [asyncio.create_task(ask_whoami_until(stop, other, b, cookie, ended)) for _ in range(8)]
                await asyncio.sleep(0.2)
                async with other.get(url(a, "/logout"), headers={"Cookie": cookie}, allow_redirects=False):
                    pass
                ended.append(time.monotonic())
                await asyncio.sleep(0.2)
                stop.set()
                late = [delay for found in await asyncio.gather(*tasks) for delay in found]
            assert not late, late
        assert len(b.events("session.cache_on")) == 1  # served from copies all along, never off
    finally:
        a.stop()
        b.stop()
