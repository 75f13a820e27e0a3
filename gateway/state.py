"""State that must not be per-process: used TOTP codes, failure counters, bans (DESIGN.md §4).

With one process the embedded :class:`MemoryState` is enough. With several
workers or replicas a code used on one of them must be refused on the others,
and a lock-out must hold everywhere, so they share a :class:`RedisState`.

Both answer the same small :class:`SharedState` protocol. Every entry expires:
nothing the gateway counts outlives its window, so neither store grows without
bound. A store that cannot be reached raises :class:`StateUnavailable`, which
callers turn into a 503: a gateway that cannot tell whether a code was already
used, or whether a user is locked out, must not guess (fail closed).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # redis is imported only when a Redis store is opened (~9 MiB otherwise never used)
    import redis.asyncio as aioredis

__all__ = [
    "MemoryState",
    "RedisState",
    "SharedState",
    "StateUnavailable",
    "open_state",
]

DEFAULT_PREFIX = "crmgw:"
MEMORY_MAX_KEYS = 100_000

_T = TypeVar("_T")


class StateUnavailable(Exception):
    """The shared store cannot be reached; callers answer 503 ``session_store_unavailable``."""


@runtime_checkable
class SharedState(Protocol):
    """Expiring flags and counters, shared by every worker that uses the same store."""

    async def first_use(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is used within ``ttl`` seconds, False on any later use."""

    async def hit(self, key: str, window: float) -> int:
        """Count one event; return the count in a fixed window that starts at the first hit."""

    async def give_back(self, key: str) -> None:
        """Take back one :meth:`hit` (an attempt counted before its outcome turned out well); never below 0."""

    async def count(self, key: str) -> int:
        """The current count of ``key`` (0 when absent or expired)."""

    async def clear(self, key: str) -> None:
        """Forget ``key`` (a counter, a flag or a used marker)."""

    async def flag(self, key: str, ttl: float) -> None:
        """Raise a flag (a ban, a lock) for ``ttl`` seconds from now; raising it again restarts it."""

    async def flagged(self, key: str) -> float | None:
        """Seconds left on the flag, or None when it is not raised."""

    async def ping(self) -> bool:
        """Whether the store answers; never raises (what ``/_gateway/ready`` asks)."""

    async def close(self) -> None:
        """Release connections."""


def _check_ttl(ttl: float) -> None:
    # A zero or negative expiry would create a key that never expires in Redis
    # (or one that is already gone): both are bugs in the caller.
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


@dataclass(slots=True)
class _Entry:
    value: int
    expires: float
    counter: bool  # written by hit(): the first to go when the table is full


class MemoryState:
    """The embedded store: one process only, bounded, on a monotonic clock.

    Expired entries are dropped when they are next read and in sweeps. When the
    table reaches ``max_keys`` a sweep drops every expired entry; if the live
    entries still fill more than 90% of it, the oldest-written are evicted, so a
    flood of distinct keys (usernames sprayed at the login form) costs bounded
    memory and an amortised O(1) per write rather than a sweep per write.
    Failure counters go first, then flags and used-code markers: a flood is made
    of counters (one per sprayed name or address), and evicting a ban or the
    marker of a used TOTP code would undo it (the code could be replayed).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MEMORY_MAX_KEYS
    ) -> None:
        if max_keys < 10:
            raise ValueError(f"max_keys must be at least 10, got {max_keys}")
        self._clock = clock
        self._max_keys = max_keys
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _put(self, key: str, value: int, ttl: float, *, counter: bool = False) -> None:
        # Re-inserting moves the key to the end, so insertion order is write order.
        self._entries.pop(key, None)
        if len(self._entries) >= self._max_keys:
            self._make_room()
        self._entries[key] = _Entry(value, self._clock() + ttl, counter)

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
        excess = len(self._entries) - self._max_keys * 9 // 10
        for counters_only in (True, False):
            if excess <= 0:
                return
            doomed = list(itertools.islice((k for k, e in self._entries.items() if e.counter or not counters_only),
                                           excess))
            for key in doomed:
                del self._entries[key]
            excess -= len(doomed)

    async def first_use(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        if self._live(key) is not None:
            return False
        self._put(key, 1, ttl)
        return True

    async def hit(self, key: str, window: float) -> int:
        _check_ttl(window)
        entry = self._live(key)
        if entry is None:
            self._put(key, 1, window, counter=True)
            return 1
        entry.value += 1
        return entry.value

    async def give_back(self, key: str) -> None:
        entry = self._live(key)
        if entry is not None:
            entry.value -= 1
            if entry.value <= 0:
                del self._entries[key]

    async def count(self, key: str) -> int:
        entry = self._live(key)
        return 0 if entry is None else entry.value

    async def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    async def flag(self, key: str, ttl: float) -> None:
        _check_ttl(ttl)
        self._put(key, 1, ttl)

    async def flagged(self, key: str) -> float | None:
        entry = self._live(key)
        return None if entry is None else entry.expires - self._clock()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


# INCR, then give the key its window if it has none yet: the same as
# INCR + EXPIRE NX, but atomic and also on Redis 6 (EXPIRE NX is Redis 7+).
# Checking PTTL rather than the count also repairs a key that lost its expiry.
_HIT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""

# DECR that keeps the window's expiry and never leaves a count of 0 or less behind.
_GIVE_BACK_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('DECR', KEYS[1]) <= 0 then
  redis.call('DEL', KEYS[1])
end
return 0
"""

# A record and a flag in one round trip (the session and its revocation on every request, see
# sessions.SessionStore.load). PTTL first: a missing record (nil) would end the array early.
_READ_FLAGGED_SCRIPT = """
return {redis.call('PTTL', KEYS[2]), redis.call('GET', KEYS[1])}
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisState:
    """Shared by every worker and replica that points at the same Redis.

    All keys are prefixed (``crmgw:`` by default) and every key is written with
    an expiry. Socket timeouts are short, so a dead or unreachable Redis makes a
    request fail in about ``timeout`` seconds instead of hanging it; a refused
    connection is retried once (a pooled connection goes stale when Redis
    restarts), a timeout is not (a retried INCR could count twice). The client
    reconnects by itself when Redis returns: nothing here needs restarting.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 0.5) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis url must start with redis://, rediss:// or unix://, got {url!r}")
        _check_ttl(timeout)
        self._prefix = prefix
        # Bound the whole operation too (connect + retry + reply), whatever the
        # socket layer does: a request never waits on the store for longer.
        self._deadline = 2.5 * timeout
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError

        self._errors: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # bytes, not str: aiohttp-session's RedisStorage, which shares this
            # client, decodes the values itself.
            decode_responses=False,
        )
        self._hit = self._client.register_script(_HIT_SCRIPT)
        self._give_back = self._client.register_script(_GIVE_BACK_SCRIPT)
        self._read_flagged = self._client.register_script(_READ_FLAGGED_SCRIPT)

    @property
    def client(self) -> aioredis.Redis:
        """The underlying client, so the session storage can share its connection pool."""
        return self._client

    @property
    def prefix(self) -> str:
        """What every key of this store starts with (the session cache tracks some of them)."""
        return self._prefix

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _run(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        try:
            async with asyncio.timeout(self._deadline):
                return await op()
        except self._errors as exc:
            raise StateUnavailable(f"redis: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def first_use(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        result = await self._run("SET NX", lambda: self._client.set(self._key(key), 1, nx=True, px=_ms(ttl)))
        return bool(result)

    async def hit(self, key: str, window: float) -> int:
        _check_ttl(window)
        result = await self._run("INCR", lambda: self._hit(keys=[self._key(key)], args=[_ms(window)]))
        return int(result)

    async def give_back(self, key: str) -> None:
        await self._run("DECR", lambda: self._give_back(keys=[self._key(key)]))

    async def count(self, key: str) -> int:
        result = await self._run("GET", lambda: self._client.get(self._key(key)))
        return 0 if result is None else int(result)

    async def clear(self, key: str) -> None:
        await self._run("DEL", lambda: self._client.delete(self._key(key)))

    async def flag(self, key: str, ttl: float) -> None:
        _check_ttl(ttl)
        await self._run("SET", lambda: self._client.set(self._key(key), 1, px=_ms(ttl)))

    async def flagged(self, key: str) -> float | None:
        return _seconds_left(await self._run("PTTL", lambda: self._client.pttl(self._key(key))))

    async def read_flagged(self, record: str, flag: str) -> tuple[bytes | None, float | None]:
        """The value of ``record`` (a key of its own, outside the prefix) and :meth:`flagged` of ``flag``, at once."""
        left, value = await self._run("PTTL+GET", lambda: self._read_flagged(keys=[record, self._key(flag)]))
        return value, _seconds_left(left)

    async def ping(self) -> bool:
        try:
            await self._run("PING", lambda: self._client.ping())
        except StateUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()


def _seconds_left(pttl: int) -> float | None:
    if pttl == -2:  # no such key
        return None
    if pttl < 0:  # a key without expiry was not written by us: treat it as raised for good
        return math.inf
    return pttl / 1000 if pttl > 0 else None


def open_state(store: str, redis_url: str) -> SharedState:
    """The store named by ``session.store``: ``cookie`` keeps state in-process, ``redis`` shares it."""
    if store == "cookie":
        return MemoryState()
    if store == "redis":
        return RedisState(redis_url)
    raise ValueError(f"unknown session store {store!r} (expected cookie or redis)")
