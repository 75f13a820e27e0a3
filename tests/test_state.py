"""Shared state (DESIGN.md §4): one behaviour table run against MemoryState and a real redis-server.

Time is measured in units ``U``: the memory store runs on an injected clock
(``U`` = 10 fake seconds, advanced instantly); the Redis store runs on Redis's
own clock (``U`` = 0.4 real seconds, advanced by sleeping), so expiry is the
server's, not a simulation of it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp_session.redis_storage import RedisStorage

from gateway.state import MemoryState, RedisState, SharedState, StateUnavailable, open_state
from tests.support.redis_server import RedisServer, free_port, redis_server_fixture

redis_server = redis_server_fixture(scope="module")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    state: SharedState
    unit: float
    advance: Callable[[float], Any]  # awaitable: advance(units)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance_memory(units: float) -> None:
            clock.now += units * 10.0

        yield Backend(MemoryState(clock=clock), 10.0, advance_memory)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    state = RedisState(server.url)

    async def advance_redis(units: float) -> None:
        await asyncio.sleep(units * 0.4)

    try:
        yield Backend(state, 0.4, advance_redis)
    finally:
        await state.close()


# Steps: (operation, key, argument in units of U or None, expected result).
# "advance" moves time by the argument; "flagged" expects seconds left in units
# (checked within 25%), or None.
Step = tuple[str, str, float | None, Any]


@dataclass(frozen=True)
class Case:
    description: str
    steps: tuple[Step, ...]


CASES = [
    Case(
        "the first use of a key is True, a second use within the ttl is False",
        (("first_use", "totp:used:jim:1", 3, True), ("first_use", "totp:used:jim:1", 3, False)),
    ),
    Case(
        "a key may be used again once its ttl has passed",
        (
            ("first_use", "k", 1, True),
            ("advance", "", 1.5, None),
            ("first_use", "k", 1, True),
        ),
    ),
    Case(
        "different keys are independent (jim's code does not burn alice's)",
        (("first_use", "totp:used:jim:7", 3, True), ("first_use", "totp:used:alice:7", 3, True)),
    ),
    Case(
        "hit counts events and count reads the total",
        (
            ("hit", "fail:jim", 3, 1),
            ("hit", "fail:jim", 3, 2),
            ("hit", "fail:jim", 3, 3),
            ("count", "fail:jim", None, 3),
        ),
    ),
    Case(
        "the window is fixed from the first hit, not sliding: a later hit does not extend it",
        (
            ("hit", "w", 2, 1),
            ("advance", "", 1.2, None),
            ("hit", "w", 2, 2),
            ("advance", "", 1.2, None),
            ("count", "w", None, 0),
            ("hit", "w", 2, 1),
        ),
    ),
    Case("an unknown counter counts 0", (("count", "nobody", None, 0),)),
    Case(
        "clear resets a counter",
        (
            ("hit", "c", 3, 1),
            ("hit", "c", 3, 2),
            ("clear", "c", None, None),
            ("count", "c", None, 0),
            ("hit", "c", 3, 1),
        ),
    ),
    Case("clear of an unknown key is harmless", (("clear", "nothing", None, None),)),
    Case(
        "give_back takes back one hit, keeps the window and never goes below 0",
        (
            ("hit", "g", 2, 1),
            ("hit", "g", 2, 2),
            ("give_back", "g", None, None),
            ("count", "g", None, 1),
            ("advance", "", 1.2, None),
            ("hit", "g", 2, 2),  # the same window: a give_back does not restart it
            ("give_back", "g", None, None),
            ("give_back", "g", None, None),
            ("give_back", "g", None, None),
            ("count", "g", None, 0),
            ("hit", "g", 2, 1),
        ),
    ),
    Case(
        "give_back of an unknown key is harmless",
        (("give_back", "nothing", None, None), ("count", "nothing", None, 0)),
    ),
    Case("an unraised flag is None", (("flagged", "ban:1.2.3.4", None, None),)),
    Case(
        "a flag reports the seconds left and goes down by itself",
        (
            ("flag", "lock:jim", 3, None),
            ("flagged", "lock:jim", None, 3),
            ("advance", "", 1, None),
            ("flagged", "lock:jim", None, 2),
            ("advance", "", 2.5, None),
            ("flagged", "lock:jim", None, None),
        ),
    ),
    Case(
        "raising a flag again restarts it",
        (
            ("flag", "lock:jim", 2, None),
            ("advance", "", 1.2, None),
            ("flag", "lock:jim", 2, None),
            ("advance", "", 1.2, None),
            ("flagged", "lock:jim", None, 0.8),
        ),
    ),
    Case(
        "clear lowers a flag",
        (("flag", "lock:pat", 3, None), ("clear", "lock:pat", None, None), ("flagged", "lock:pat", None, None)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
async def test_behaviour(backend: Backend, case: Case) -> None:
    state = backend.state
    for number, (op, key, arg, expected) in enumerate(case.steps, 1):
        where = f"step {number} ({op} {key})"
        if op == "advance":
            assert arg is not None
            await backend.advance(arg)
        elif op == "first_use":
            assert arg is not None
            assert await state.first_use(key, arg * backend.unit) is expected, where
        elif op == "hit":
            assert arg is not None
            assert await state.hit(key, arg * backend.unit) == expected, where
        elif op == "count":
            assert await state.count(key) == expected, where
        elif op == "clear":
            await state.clear(key)
        elif op == "give_back":
            await state.give_back(key)
        elif op == "flag":
            assert arg is not None
            await state.flag(key, arg * backend.unit)
        elif op == "flagged":
            left = await state.flagged(key)
            if expected is None:
                assert left is None, where
            else:
                assert left is not None, where
                assert left == pytest.approx(expected * backend.unit, rel=0.25), where
        else:
            raise AssertionError(f"unknown step {op}")


async def test_ping_answers_true(backend: Backend) -> None:
    assert await backend.state.ping() is True


@pytest.mark.parametrize(
    ("call", "ttl"),
    [("first_use", 0.0), ("hit", -1.0), ("flag", math.nan), ("flag", math.inf)],
    ids=[
        "a zero ttl is refused (Redis would keep the key for ever)",
        "a negative window is refused",
        "a NaN ttl is refused",
        "an infinite ttl is refused (every key must expire)",
    ],
)
async def test_bad_ttl_is_refused(backend: Backend, call: str, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await getattr(backend.state, call)("k", ttl)


def test_both_stores_satisfy_the_protocol(redis_server: RedisServer) -> None:
    assert isinstance(MemoryState(), SharedState)
    assert isinstance(RedisState(redis_server.url), SharedState)


# --- MemoryState: bounded -----------------------------------------------------------------------


async def test_memory_store_is_bounded_and_evicts_the_oldest_live_keys() -> None:
    state = MemoryState(clock=FakeClock(), max_keys=100)
    for i in range(1000):
        await state.hit(f"fail:user{i}", 600)
    assert len(state) <= 100
    assert await state.count("fail:user999") == 1, "the newest key must survive"
    assert await state.count("fail:user0") == 0, "the oldest key is the one evicted"


async def test_memory_store_evicts_expired_entries_before_live_ones() -> None:
    clock = FakeClock()
    state = MemoryState(clock=clock, max_keys=100)
    await state.flag("totp:lock:jim", 900)  # the oldest entry, but still live
    for i in range(99):
        await state.first_use(f"totp:used:u{i}:1", 120)
    clock.now += 121  # the used-code markers expire; jim's lock does not
    for i in range(50):
        await state.first_use(f"totp:used:u{i}:2", 120)
    assert await state.flagged("totp:lock:jim") == pytest.approx(900 - 121)
    assert len(state) == 51


def test_memory_store_refuses_a_tiny_bound() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryState(max_keys=1)


# --- RedisState: the real server ------------------------------------------------------------------


def raw_client(server: RedisServer) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url)


async def test_redis_keys_are_prefixed_and_all_expire(redis_server: RedisServer) -> None:
    redis_server.flushall()
    state = RedisState(redis_server.url)
    raw = raw_client(redis_server)
    try:
        await state.first_use("totp:used:jim:42", 120)
        await state.hit("totp:fail:jim", 900)
        await state.hit("totp:fail:jim", 900)
        await state.flag("totp:lock:jim", 900)
        keys = sorted(k.decode() for k in await raw.keys("*"))
        assert keys == ["crmgw:totp:fail:jim", "crmgw:totp:lock:jim", "crmgw:totp:used:jim:42"]
        ttls = {k: await raw.pttl(k) for k in keys}
        assert 0 < ttls["crmgw:totp:used:jim:42"] <= 120_000
        assert 0 < ttls["crmgw:totp:fail:jim"] <= 900_000
        assert 0 < ttls["crmgw:totp:lock:jim"] <= 900_000
    finally:
        await state.close()
        await raw.aclose()


async def test_redis_custom_prefix(redis_server: RedisServer) -> None:
    redis_server.flushall()
    state = RedisState(redis_server.url, prefix="tenant-b:")
    raw = raw_client(redis_server)
    try:
        await state.hit("x", 60)
        assert [k.decode() for k in await raw.keys("*")] == ["tenant-b:x"]
    finally:
        await state.close()
        await raw.aclose()


async def test_redis_hit_repairs_a_counter_without_expiry(redis_server: RedisServer) -> None:
    """A counter left without expiry (written by hand, or by an old version) gets one on the next hit."""
    redis_server.flushall()
    state = RedisState(redis_server.url)
    raw = raw_client(redis_server)
    try:
        await raw.set("crmgw:fail:sam", 4)
        assert await state.hit("fail:sam", 60) == 5
        assert 0 < await raw.pttl("crmgw:fail:sam") <= 60_000
    finally:
        await state.close()
        await raw.aclose()


async def test_redis_reads_a_record_and_a_flag_at_once(redis_server: RedisServer) -> None:
    """A session (a key of its own, outside the prefix) and its revocation flag, in one round trip."""
    redis_server.flushall()
    state = RedisState(redis_server.url)
    raw = raw_client(redis_server)
    try:
        assert await state.read_flagged("crmgw_session_abc", "session:revoked:abc") == (None, None)
        await raw.set("crmgw_session_abc", b'{"session": {}}')
        assert await state.read_flagged("crmgw_session_abc", "session:revoked:abc") == (b'{"session": {}}', None)
        await state.flag("session:revoked:abc", 60)
        value, left = await state.read_flagged("crmgw_session_abc", "session:revoked:abc")
        assert value == b'{"session": {}}' and left is not None and 59 < left <= 60
        await raw.delete("crmgw_session_abc")
        value, left = await state.read_flagged("crmgw_session_abc", "session:revoked:abc")
        assert value is None and left is not None
    finally:
        await state.close()
        await raw.aclose()


async def test_two_redis_clients_share_counters_flags_and_used_codes(redis_server: RedisServer) -> None:
    """What two workers or replicas see: one's failures, locks and used codes are the other's."""
    redis_server.flushall()
    worker_a, worker_b = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        assert await worker_a.hit("totp:fail:jim", 900) == 1
        assert await worker_a.hit("totp:fail:jim", 900) == 2
        assert await worker_b.hit("totp:fail:jim", 900) == 3
        assert await worker_b.count("totp:fail:jim") == 3
        assert await worker_a.first_use("totp:used:jim:99", 120) is True
        assert await worker_b.first_use("totp:used:jim:99", 120) is False
        await worker_a.flag("totp:lock:jim", 900)
        left = await worker_b.flagged("totp:lock:jim")
        assert left is not None and 899 < left <= 900
        await worker_b.clear("totp:lock:jim")
        assert await worker_a.flagged("totp:lock:jim") is None
    finally:
        await worker_a.close()
        await worker_b.close()


async def test_redis_outage_fails_fast_and_recovers_on_restart() -> None:
    with RedisServer() as server:
        state = RedisState(server.url)
        try:
            assert await state.hit("fail:jim", 60) == 1  # a pooled connection now exists
            server.stop()

            for description, call in [
                ("first_use", lambda: state.first_use("totp:used:jim:1", 120)),
                ("hit", lambda: state.hit("fail:jim", 60)),
                ("count", lambda: state.count("fail:jim")),
                ("clear", lambda: state.clear("fail:jim")),
                ("flag", lambda: state.flag("lock:jim", 60)),
                ("flagged", lambda: state.flagged("lock:jim")),
            ]:
                started = time.monotonic()
                with pytest.raises(StateUnavailable, match="redis"):
                    await call()
                assert time.monotonic() - started < 1.0, f"{description} took too long to fail"

            started = time.monotonic()
            assert await state.ping() is False
            assert time.monotonic() - started < 1.0

            server.start()  # same port, empty (no persistence)
            assert await state.ping() is True
            assert await state.hit("fail:jim", 60) == 1
            assert await state.first_use("totp:used:jim:1", 120) is True
        finally:
            await state.close()


async def test_redis_never_started_is_unavailable_not_a_hang() -> None:
    state = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await state.first_use("k", 10)
        assert await state.ping() is False
        assert time.monotonic() - started < 2.0
    finally:
        await state.close()


def test_redis_client_can_back_the_session_storage(redis_server: RedisServer) -> None:
    """The session storage shares this client's pool; aiohttp-session checks the client's type."""
    state = RedisState(redis_server.url)
    assert isinstance(state.client, aioredis.Redis)
    RedisStorage(state.client, cookie_name="crmgw_session")


@pytest.mark.parametrize(
    ("url", "message"),
    [("127.0.0.1:6379", "redis url must start"), ("http://127.0.0.1:6379", "redis url must start")],
    ids=["a bare host:port is refused", "a non-redis scheme is refused"],
)
def test_redis_url_is_checked_up_front(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisState(url)


@pytest.mark.parametrize(
    ("store", "expected"),
    [("cookie", MemoryState), ("redis", RedisState)],
    ids=["store cookie keeps state in the process", "store redis shares it"],
)
def test_open_state(store: str, expected: type) -> None:
    assert isinstance(open_state(store, "redis://127.0.0.1:6379/0"), expected)


def test_open_state_refuses_an_unknown_store() -> None:
    with pytest.raises(ValueError, match="unknown session store 'memcached'"):
        open_state("memcached", "redis://127.0.0.1:6379/0")


async def test_a_flood_of_failure_counters_evicts_counters_not_bans_or_used_codes() -> None:
    """Evicting a ban or a used-code marker would undo it (the code could be replayed): counters go first."""
    state = MemoryState(clock=FakeClock(), max_keys=100)
    await state.flag("login:ban:user:jim", 900)
    assert await state.first_use("totp:used:jim:12345", 120)
    await state.hit("login:fail:user:old", 600)
    for i in range(1000):  # names sprayed at the login form
        await state.hit(f"login:fail:user:sprayed{i}", 600)
    assert len(state) <= 100
    assert await state.flagged("login:ban:user:jim") is not None
    assert not await state.first_use("totp:used:jim:12345", 120), "the used code could be replayed"
    assert await state.count("login:fail:user:old") == 0, "the oldest counter is the one evicted"
    assert await state.count("login:fail:user:sprayed999") == 1


async def test_flags_are_evicted_too_when_nothing_else_is_left() -> None:
    state = MemoryState(clock=FakeClock(), max_keys=100)
    for i in range(1000):
        await state.flag(f"login:ban:ip:10.0.{i // 256}.{i % 256}", 900)
    assert len(state) <= 100
    assert await state.flagged("login:ban:ip:10.0.3.231") is not None  # the newest
